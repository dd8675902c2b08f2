"""The names the README and the issues promise are importable from the sub-package, and they are the
registered implementations (not copies)."""
import deepmetric.data as data
import deepmetric.functional as functional
import deepmetric.losses as losses
import deepmetric.retrieval as retrieval
import deepmetric.synthesis as synthesis
from deepmetric.registry import DATASETS, LOSSES, SYNTHESISERS


def test_losses_and_synthesisers_are_the_registered_classes():
    assert losses.InstanceSoftmaxLoss is LOSSES.get("instance_softmax")
    assert losses.CategorySoftmaxLoss is LOSSES.get("category_softmax")
    assert losses.IntraClassRankingLoss is LOSSES.get("intra_ranking")
    assert losses.HPHNTripletLoss is LOSSES.get("hphn_triplet")
    for name, cls in [("see", synthesis.SphericalExpansion), ("embedding_expansion", synthesis.EmbeddingExpansion),
                      ("symmetrical", synthesis.SymmetricalSynthesis), ("intra_variance", synthesis.IntraVarianceSynthesis),
                      ("feature_interpolation", synthesis.FeatureInterpolation),
                      ("angular_perturbation", synthesis.AngularPerturbation)]:
        assert SYNTHESISERS.get(name) is cls


def test_datasets_functions_and_metrics():
    for name, cls in [("cub200", data.CUB200), ("cars196", data.Cars196), ("sop", data.StanfordOnlineProducts),
                      ("inshop", data.InShop), ("cifar10", data.CIFAR10), ("stl10", data.STL10), ("mnist", data.MNIST),
                      ("csv", data.CSVDataset), ("image_folder", data.ImageFolderDataset)]:
        assert DATASETS.get(name) is cls
    centres = functional.max_mahalanobis_centers(4, 3)
    assert abs(float(centres[0] @ centres[1]) + 1 / 3) < 1e-6
    assert callable(retrieval.retrieval_metrics) and callable(retrieval.knn_accuracy)
    assert callable(losses.build_loss) and callable(losses.two_view_batch)
