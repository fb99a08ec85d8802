"""run(): the command-line tests' way to run a program (tests/e2e, tests/mpi, tests/train_example):
its output captured, a crash (death by signal) always a failure, and the exit status checked
unless expect_rc is None. Failures raise AssertionError with the command and its output's tail."""
import subprocess


def run(cmd, expect_rc=0, timeout=600):
    cmd = [str(c) for c in cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode < 0:
        raise AssertionError(f"{cmd} died with signal {-p.returncode}\n{p.stderr}")
    if expect_rc is not None and p.returncode != expect_rc:
        raise AssertionError(
            f"{' '.join(cmd)}: exit {p.returncode}, expected {expect_rc}\n"
            f"stdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}")
    return p
