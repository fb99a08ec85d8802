"""How the PyTorch comparisons (compare_pytorch.py, compare_pytorch_train.py) run PyTorch: in
child processes with pinned thread pools, one per setting of SETTINGS, on OpenBLAS's best kernels
for the host. Imported by both scripts (they run from bench/, so it is on their path)."""
import os

# Thread settings: name -> (torch/OpenMP threads, OpenBLAS threads).
SETTINGS = {"1T": (1, 1), "2T": (2, 2), "2Tb": (1, 2)}


def avx512_cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


def add_coretype_argument(ap):
    ap.add_argument("--openblas-coretype", default="auto",
                    help="OPENBLAS_CORETYPE of PyTorch's children: auto (SkylakeX on AVX-512 hosts), "
                         "inherit (the environment's) or a name")


def set_blas_coretype(env, coretype):
    """OpenBLAS's kernels for the children: SkylakeX (AVX-512) on any AVX-512 host by default,
    whatever the environment says (Debian 12's OpenBLAS 0.3.21 predates Zen 5, and a machine-wide
    OPENBLAS_CORETYPE=Haswell makes PyTorch's training step 1.45x slower on Zen 5: PyTorch gets its
    best BLAS); --openblas-coretype NAME forces one, "inherit" keeps the environment's."""
    if coretype == "inherit":
        return
    if coretype != "auto":
        env["OPENBLAS_CORETYPE"] = coretype
    elif avx512_cpu():
        env["OPENBLAS_CORETYPE"] = "SkylakeX"


def child_env(omp, blas, coretype, passive=True):
    """The environment of a PyTorch child: `omp` torch/OpenMP threads, `blas` OpenBLAS threads
    (idle OpenMP threads sleep when `passive`), OpenBLAS's kernels as set_blas_coretype says."""
    env = dict(os.environ, OMP_NUM_THREADS=str(omp), OPENBLAS_NUM_THREADS=str(blas),
               MKL_NUM_THREADS=str(omp))
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    set_blas_coretype(env, coretype)
    return env


def coretype_line(coretype):
    """"OPENBLAS_CORETYPE <here>, <children's> in PyTorch's children", for the scripts' header."""
    child = {}
    set_blas_coretype(child, coretype)
    here = os.environ.get("OPENBLAS_CORETYPE", "(unset)")
    return "OPENBLAS_CORETYPE %s here, %s in PyTorch's children" % (
        here, child.get("OPENBLAS_CORETYPE", here))
