"""Intra-variance synthesis: points at increasing intensity around a sample (Liu et al., EAAI 2024; SPEC.md §5).

The geometry is :func:`deepmetric.functional.geometry.feature_intensity_points` (default: before the
embedding head), :func:`deepmetric.functional.geometry.intensity_points` (on the embedding sphere) or
:func:`graded_augment` (graded image augmentations, the self-supervised ranking of Fu et al., AAAI 2021,
SPEC §5's other option); the loss on the points is
:class:`deepmetric.losses.intra_ranking.IntraClassRankingLoss`, combined by
:class:`deepmetric.losses.synthesis_loss.SynthesisLoss` (``combine = "ranking"``).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from deepmetric.functional.geometry import feature_intensity_points, intensity_points
from deepmetric.functional.similarity import l2_normalize
from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.embedding_expansion import TracedSynthBatch, check_batch, compute_dtype, traced
from deepmetric.synthesis.spherical_expansion import class_axes, rank_order

__all__ = ["IntraVarianceSynthesis", "SPACES", "IMAGE_DEFAULTS", "graded_augment"]

SPACES = ("features", "embedding", "image")
#: strengths per intensity step of ``space="image"`` (**[choice]**, Fu et al. give no values we can use):
#: rotation in degrees, translation as a fraction of the image side, shrink of the scale, Gaussian noise std
#: in units of the normalised pixels. At J = 3 the strongest copy is turned 30°, moved 15%, shrunk to 0.85
#: and has noise of std 0.3.
IMAGE_DEFAULTS = {"rotation": 10.0, "translation": 0.05, "scale": 0.05, "noise": 0.1}


def graded_augment(
    images: torch.Tensor,
    intensity: torch.Tensor,
    *,
    rotation: float,
    translation: float,
    scale: float,
    noise: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Augment image i at intensity j_i: deterministic strength, random direction.

    images (n, C, H, W) (normalised, any memory format), intensity (n,) numbers j >= 0 -> (n, C, H, W).
    Copy i is the image turned by s_i·j·rotation degrees (s_i = ±1 at random), shrunk by the factor
    c = 1 − j·scale about the centre, moved by j·translation of the image side in a uniformly random
    direction (pixel geometry: no shear on non-square images), sampled bilinearly with zeros outside
    (the dataset mean, the images being normalised), plus Gaussian noise of std j·noise. In output pixel
    coordinates p (centred), the copy at p is the image at R(−s·j·θ)(p − t)/c. Intensity 0 is the
    identity. Random draws, in this order, all from ``generator``: n uniform numbers (signs), n uniform
    numbers (translation angles), then n·C·H·W standard normals (noise; drawn only when ``noise`` > 0).
    """
    if images.ndim != 4:
        raise ValueError(f"graded_augment: images must be (n, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    if intensity.shape != (n,):
        raise ValueError(f"graded_augment: intensity must be ({n},), one per image, got {tuple(intensity.shape)}")
    dev, dtype = images.device, images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    gdev = generator.device
    sign = torch.where(torch.rand(n, generator=generator, device=gdev) < 0.5, -1.0, 1.0).to(dev, dtype)
    phi = (2 * math.pi * torch.rand(n, generator=generator, device=gdev)).to(dev, dtype)
    j = intensity.to(dev, dtype)
    angle = sign * j * math.radians(rotation)
    shrink = 1.0 - j * scale
    if bool((shrink <= 0).any()):
        raise ValueError(f"graded_augment: scale={scale} at intensity {float(j.max())} shrinks the image to nothing; need intensity·scale < 1")
    # theta maps output to input in normalised coordinates; pixel geometry: x_n = x_p·2/W, y_n = y_p·2/H.
    cos, sin = torch.cos(angle), torch.sin(angle)
    ax, ay = w / max(w, h), h / max(w, h)  # the image side is the longer one: translation is isotropic in pixels
    rot = torch.stack([torch.stack([cos, sin * ay / ax], -1), torch.stack([-sin * ax / ay, cos], -1)], -2)  # R(−angle)
    lin = rot / shrink[:, None, None]
    t = (j * translation * 2)[:, None] * torch.stack([torch.cos(phi) / ax, torch.sin(phi) / ay], -1)
    theta = torch.cat([lin, -(lin @ t[:, :, None])], dim=2)
    x = images.to(dtype)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if noise > 0:
        eps = torch.randn(n, c, h, w, generator=generator, device=gdev, dtype=dtype).to(dev)
        out = out + (j * noise)[:, None, None, None] * eps
    return out.to(images.dtype)


@contextmanager
def batch_statistics_only(module: nn.Module) -> Iterator[None]:
    """While active, BatchNorm layers of ``module`` that are training normalise with the batch's own
    statistics without updating their running statistics: synthetic rows must not move what the real
    images set (the head of a ``head_norm: bn`` model)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


@SYNTHESISERS.register("intra_variance")
class IntraVarianceSynthesis(nn.Module):
    """J points per gated sample at increasing intensity j = 1..J, which the network must rank (SPEC §5).

    Where the points are made (``space``, **[choice]**, SPEC §5 default ``"features"``):

    * ``"features"``: in the pooled backbone feature space, before the embedding head. The source's
      feature f moves by f^j = f + j·α·‖σ‖·normalise(ε^j ⊙ σ), σ the per-dimension standard deviation of
      the batch's features (detached: a scale, not a path for gradients), ε^j standard normal. So α is in
      units of the batch's spread ‖σ‖ (the RMS distance of a feature to the batch mean) and the random
      directions follow the batch's own variation. The model's head maps f^j to the embedding r^j. How
      fast s(r, r^j) falls with j is then a property of the learned head and features, which the ranking
      loss trains (gradients reach the head through r^j, and the backbone through f and r). Needs the
      context ``features=`` (B, F) and ``head=`` (the model's head module); the training loop passes
      both. A batch whose features do not vary (one row, or collapsed features) has no scale: nothing is
      synthesised. BatchNorm in the head normalises the synthetic rows with their own statistics
      and does not update its running statistics.
    * ``"embedding"``: r^j = normalise(r + j·α·u^j) on the unit sphere of the final embedding (the
      original implementation). s(r, r^j) ≈ 1/√(1+j²α²) then holds by construction and the ranking loss
      is close to a no-op; kept for comparison only.
    * ``"image"``: graded image augmentations, the self-supervised ranking of Fu et al. (AAAI 2021): the
      source image x becomes x^j = :func:`graded_augment` (x, j) — turned by ±j·``rotation`` degrees,
      shrunk to 1 − j·``scale``, moved by j·``translation`` of the image side in a random direction, plus
      noise of std j·``noise`` — and the model embeds it, r^j = embed(x^j) (a new forward pass: gradients
      reach every parameter of the model through r^j). Needs the context ``images=`` (the batch's
      normalised images as given to the model) and ``embed=`` (images -> embeddings, with the model's
      BatchNorm layers using batch statistics only); ``image_rows=`` (n,) says which embedding row each
      image is (default: image i is row i). Under DDP the embeddings are the global batch while each
      process has only its own images: the training loop passes that process's rows, so each process
      ranks copies of its own gated samples only (DDP's gradient averaging then trains the mean over
      processes of their ranking terms; the logged ``loss_aux`` is rank 0's). ``alpha`` is unused.
      Random draws: those of :func:`graded_augment` for the m·J copies (2·m·J uniform, then the noise).

    Gate (**[choice]**): a sample is used when the cosine of its embedding to its class proxy — or,
    without proxies, to its class centre in the batch — lies in ``band`` = [lo, hi]: not already collapsed
    onto the proxy, not an outlier. Each gated sample gets J points with independent random directions
    (diversity). Gradients flow through the points to their sources unless ``detach``.

    Output: originals, then for each gated sample (by decreasing cosine, the order of the random draws)
    its J points with intensities 1..J (``batch.intensity``) and source (``batch.owner[:, 0]``).
    Random draws (from ``generator``, a local one seeded 0 if None): (m, J, F) normal numbers (F the
    feature or embedding width).

    Loss (SynthesisLoss, ``combine = "ranking"``): L = base(real) + γ·IntraClassRankingLoss(batch), with
    the ranking loss built from ``margin`` and ``class_margin`` (``ranking_loss_params``).

    Defaults (**[choice]**, the paper's values are not available): J = 3, α = 0.5, margin 0.1 and γ = 32.
    The ranking loss is a hinge on cosines while Proxy-Anchor scales cosines by α = 32; γ = 32 puts the
    ranking on the same scale. With γ = 1 its share of the gradient on the real embeddings is below 0.5%
    on the MNIST recipe; ``benchmarks/bench_intra_variance.py`` measures it at the defaults
    (``benchmarks/results/intra_variance.md``).

    Args:
        num_intensities: J >= 1.
        alpha: α > 0, the step per intensity (units of the batch's feature spread ‖σ‖ for ``"features"``,
            of the unit sphere's radius for ``"embedding"``).
        band: (lo, hi), −1 <= lo <= hi <= 1, the gate on the cosine to the proxy/centre.
        weight: γ, the weight of the ranking loss (SynthesisLoss's default).
        margin: the ranking loss's required similarity drop per intensity step.
        class_margin: the ranking loss's margin between the source and other classes.
        detach: stop gradients through the synthetic points into their sources (the head still learns
            from them in ``"features"``; in ``"image"`` the copies are embedded without gradients, so only
            the real embeddings learn from the ranking).
        space: ``"features"`` (default), ``"embedding"`` or ``"image"``, see above.
        rotation, translation, scale, noise: the per-step strengths of ``"image"`` (degrees >= 0, fraction
            of the image side >= 0, shrink with J·scale < 1, noise std >= 0; at least one > 0); unset takes
            :data:`IMAGE_DEFAULTS`. Setting them with another space is an error.
    """

    combine = "ranking"

    def __init__(
        self,
        *,
        num_intensities: int = 3,
        alpha: float = 0.5,
        band: Sequence[float] = (0.2, 0.9),
        weight: float = 32.0,
        margin: float = 0.1,
        class_margin: float = 0.1,
        detach: bool = False,
        space: str = "features",
        rotation: Optional[float] = None,
        translation: Optional[float] = None,
        scale: Optional[float] = None,
        noise: Optional[float] = None,
    ) -> None:
        super().__init__()
        if isinstance(num_intensities, bool) or not isinstance(num_intensities, int) or num_intensities < 1:
            raise ValueError(f"num_intensities (J) must be an integer >= 1, got {num_intensities!r}")
        if not (isinstance(alpha, (int, float)) and alpha > 0):
            raise ValueError(f"alpha (step per intensity) must be a number > 0, got {alpha!r}")
        b = tuple(band)
        if len(b) != 2 or not all(isinstance(v, (int, float)) for v in b) or not -1.0 <= b[0] <= b[1] <= 1.0:
            raise ValueError(f"band must be (lo, hi) with -1 <= lo <= hi <= 1 (cosine to the class proxy), got {band!r}")
        for name, v in (("weight", weight), ("margin", margin), ("class_margin", class_margin)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if not isinstance(detach, bool):
            raise ValueError(f"detach must be true or false, got {detach!r}")
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES} (where the graded points are made), got {space!r}")
        strengths = {"rotation": rotation, "translation": translation, "scale": scale, "noise": noise}
        given = [k for k, v in strengths.items() if v is not None]
        if space != "image" and given:
            raise ValueError(f"{', '.join(given)} set the image augmentations of space='image'; space is {space!r}: remove them or set space=image")
        self.augment: Dict[str, float] = {}
        if space == "image":
            for k, v in strengths.items():
                v = IMAGE_DEFAULTS[k] if v is None else v
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v):
                    raise ValueError(f"{k} (image augmentation strength per intensity step) must be a finite number >= 0, got {v!r}")
                self.augment[k] = float(v)
            if not num_intensities * self.augment["scale"] < 1:
                raise ValueError(
                    f"scale={self.augment['scale']} shrinks the copy at intensity J={num_intensities} to "
                    f"{1 - num_intensities * self.augment['scale']:g}; need J·scale < 1"
                )
            if not any(self.augment.values()):
                raise ValueError("space='image' with rotation, translation, scale and noise all 0 makes copies equal to the image; set one > 0")
        self.num_intensities = num_intensities
        self.alpha = float(alpha)
        self.band: Tuple[float, float] = (float(b[0]), float(b[1]))
        self.weight = float(weight)
        self.margin = float(margin)
        self.class_margin = float(class_margin)
        self.detach = detach
        self.space = space

    def ranking_loss_params(self) -> Dict[str, Any]:
        """Keyword arguments of the IntraClassRankingLoss that SynthesisLoss builds for this synthesiser."""
        return {"margin": self.margin, "class_margin": self.class_margin}

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        proxies: Optional[torch.Tensor] = None,
        progress: float = 0.0,
        features: Optional[torch.Tensor] = None,
        head: Optional[nn.Module] = None,
        images: Optional[torch.Tensor] = None,
        embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        image_rows: Optional[torch.Tensor] = None,
    ) -> TracedSynthBatch:
        """embeddings (B, d), labels (B,), proxies (C, d) or None, features (B, F) and head (F -> d) for
        ``space="features"``, images (n, C, H, W), embed and image_rows (n,) for ``space="image"``
        -> B + J·m rows. ``progress`` is unused."""
        check_batch(embeddings, labels, "intra_variance")
        b, d = embeddings.shape
        if self.space == "features":
            if features is None or head is None:
                raise ValueError(
                    "intra_variance (space='features') synthesises before the embedding head and needs the pooled "
                    "backbone features and the head: call the loss with features=(B, F) tensor and head=model.head "
                    "(the training loop does), or set synthesis.params.space=embedding"
                )
            if features.ndim != 2 or features.shape[0] != b:
                raise ValueError(f"intra_variance: features must be (B, F) with B={b} rows like the embeddings, got {tuple(features.shape)}")
        has_image = None
        if self.space == "image":
            has_image, image_of = self._image_rows(b, images, embed, image_rows, embeddings.device)
        if b == 0:
            return traced(embeddings, labels)
        z = l2_normalize(compute_dtype(embeddings))
        w = class_axes(z, labels, proxies, "intra_variance")
        cos = (z * w).sum(dim=1).detach()  # gating is discrete
        order = rank_order(cos)
        keep = (cos[order] >= self.band[0]) & (cos[order] <= self.band[1])
        if has_image is not None:  # only rows whose image this process has (DDP: its own)
            keep = keep & has_image[order]
        sel = order[keep]
        if len(sel) == 0:
            return traced(embeddings, labels)
        if generator is None:  # a local, fixed seed: never the global RNG
            generator = torch.Generator(device=embeddings.device).manual_seed(0)
        j = self.num_intensities
        if self.space == "features":
            f = compute_dtype(features)
            spread = f.detach().std(dim=0, unbiased=False)  # a scale for the intensities, not a gradient path
            if not float(spread.norm()) > 0.0:  # one row or collapsed features: no scale to grade against
                return traced(embeddings, labels)
            noise = torch.randn(len(sel), j, f.shape[1], generator=generator, device=generator.device, dtype=f.dtype).to(f.device)
            src = f[sel].detach() if self.detach else f[sel]  # detach option: points do not train their sources
            graded = feature_intensity_points(src, noise, spread, self.alpha)
            with batch_statistics_only(head):
                pts = compute_dtype(head(graded.reshape(-1, f.shape[1])))
            if pts.ndim != 2 or pts.shape[1] != d:
                raise ValueError(f"intra_variance: head maps features to {tuple(pts.shape[1:])}, expected the embedding width {d}")
        elif self.space == "image":
            src = images[image_of[sel]].repeat_interleave(j, dim=0)
            inten = torch.arange(1, j + 1, device=src.device).repeat(len(sel))
            copies = graded_augment(src, inten, generator=generator, **self.augment)
            if images.is_contiguous(memory_format=torch.channels_last):
                copies = copies.contiguous(memory_format=torch.channels_last)
            if self.detach:
                with torch.no_grad():
                    pts = compute_dtype(embed(copies))
            else:
                pts = compute_dtype(embed(copies))
            if pts.ndim != 2 or pts.shape != (len(src), d):
                raise ValueError(f"intra_variance: embed maps {len(src)} images to {tuple(pts.shape)}, expected ({len(src)}, {d})")
        else:
            directions = torch.randn(len(sel), j, d, generator=generator, device=generator.device, dtype=z.dtype).to(z.device)
            src = z[sel].detach() if self.detach else z[sel]  # detach option: points do not train their sources
            pts = intensity_points(src, directions, self.alpha).reshape(-1, d)
        owner = sel.repeat_interleave(j)[:, None].expand(-1, 2)
        inten = torch.arange(1, j + 1, device=labels.device).repeat(len(sel))
        return traced(embeddings, labels, pts, labels[sel].repeat_interleave(j), owner, inten)

    @staticmethod
    def _image_rows(b: int, images, embed, image_rows, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(has_image (B,) bool, image_of (B,) long: the image index of each embedding row) for ``"image"``."""
        if images is None or embed is None:
            raise ValueError(
                "intra_variance (space='image') augments the batch's images and embeds them with the model: call the "
                "loss with images=(n, C, H, W) tensor and embed=callable (the training loop does), or set "
                "synthesis.params.space=features"
            )
        if images.ndim != 4:
            raise ValueError(f"intra_variance: images must be (n, C, H, W), got {tuple(images.shape)}")
        n = images.shape[0]
        if image_rows is None:
            if n != b:
                raise ValueError(f"intra_variance: {n} images for {b} embeddings; pass image_rows= (the embedding row of each image)")
            image_rows = torch.arange(b, device=device)
        image_rows = image_rows.to(device=device, dtype=torch.long)
        if image_rows.shape != (n,) or (n and (int(image_rows.min()) < 0 or int(image_rows.max()) >= b)) or len(set(image_rows.tolist())) != n:
            raise ValueError(f"intra_variance: image_rows must be ({n},) distinct rows in [0, {b}), got {image_rows.tolist()}")
        has_image = torch.zeros(b, dtype=torch.bool, device=device)
        has_image[image_rows] = True
        image_of = torch.zeros(b, dtype=torch.long, device=device)
        image_of[image_rows] = torch.arange(n, device=device)
        return has_image, image_of

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.augment.items())
        return (
            f"num_intensities={self.num_intensities}, alpha={self.alpha}, band={self.band}, weight={self.weight}, "
            f"margin={self.margin}, class_margin={self.class_margin}, detach={self.detach}, space={self.space!r}{extra}"
        )
