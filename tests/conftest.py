"""Session set-up shared by every test.

Under ``pytest -n N`` (make test) each of the N workers would start one compute thread per core, so the
machine runs N times more threads than it has cores and matmul-heavy tests slow down several-fold
(measured: the demo test went from 30 s alone to 150 s beside another worker). Each worker gets its
share of the cores instead; subprocesses started by tests inherit it through OMP_NUM_THREADS.
"""
import os

workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if workers > 1:
    share = str(max(1, (os.cpu_count() or 1) // workers))
    os.environ.setdefault("OMP_NUM_THREADS", share)
    os.environ.setdefault("MKL_NUM_THREADS", share)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
