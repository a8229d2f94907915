"""Numba loads machine code from its cache directory: the one we choose must be private.

A predictable path in the shared temporary folder is used only when it is a real
directory owned by this user and writable by nobody else; otherwise it is skipped and a
fresh private directory used; with no writable place at all the package still imports,
with caching off. Whole-import behaviour runs in subprocesses with a patched environment.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autodiff_lab.kernels import numba_cache as nc

ROOT = Path(__file__).resolve().parents[2]
UID = os.getuid() if hasattr(os, "getuid") else None
posix_only = pytest.mark.skipif(UID is None, reason="ownership checks are POSIX-only")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- the directory check, in this process ----------------------------------------------

@posix_only
def test_a_new_directory_is_created_private(tmp_path):
    found = nc.private_dir(tmp_path / "cache")
    assert found == tmp_path / "cache" and _mode(found) == 0o700


@posix_only
def test_an_existing_directory_of_ours_readable_by_others_is_made_private(tmp_path):
    (tmp_path / "cache").mkdir(mode=0o755)
    os.chmod(tmp_path / "cache", 0o755)
    assert nc.private_dir(tmp_path / "cache") == tmp_path / "cache"
    assert _mode(tmp_path / "cache") == 0o700


@posix_only
def test_a_directory_others_can_write_to_is_refused(tmp_path):
    (tmp_path / "cache").mkdir()
    os.chmod(tmp_path / "cache", 0o777)
    with pytest.raises(nc.UnsafeCacheDirError, match="writable by other users"):
        nc.private_dir(tmp_path / "cache")


@posix_only
def test_a_symbolic_link_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "cache").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(nc.UnsafeCacheDirError, match="symbolic link"):
        nc.private_dir(tmp_path / "cache")


@posix_only
def test_a_directory_under_a_folder_anyone_can_change_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # world-writable without the sticky bit: others may swap entries
    with pytest.raises(nc.UnsafeCacheDirError, match="writable by other users"):
        nc.private_dir(shared / "cache")
    os.chmod(shared, 0o777 | stat.S_ISVTX)  # like /tmp: fine
    assert nc.private_dir(shared / "cache") == shared / "cache"


@pytest.mark.skipif(UID != 0, reason="needs root to give a directory to another user")
def test_a_directory_of_another_user_is_refused(tmp_path):
    (tmp_path / "cache").mkdir(mode=0o700)
    os.chown(tmp_path / "cache", 65534, 65534)
    with pytest.raises(nc.UnsafeCacheDirError, match="belongs to user 65534"):
        nc.private_dir(tmp_path / "cache")


def test_a_path_below_a_file_is_simply_unavailable(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    assert nc.private_dir(tmp_path / "a-file" / "cache") is None


# --- the whole import, in subprocesses -------------------------------------------------

def _run(code: str, env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           # the user's own choice and the per-user cache folder are unusable
           "NUMBA_CACHE_DIR": str(blocker / "numba"), "XDG_CACHE_HOME": str(blocker / "xdg"),
           "HOME": str(blocker / "home"), **env_extra}
    prelude = textwrap.dedent("""
        import warnings
        warnings.simplefilter("always")
        import numpy as np
        def check_kernel():
            from autodiff_lab.kernels import elementwise
            out = elementwise.relu_backward(np.ones(4), np.array([1.0, -1.0, 0.0, 2.0]))
            assert list(out) == [1.0, 0.0, 0.0, 1.0], out
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


@posix_only
def test_an_unsafe_temporary_directory_is_skipped_for_a_fresh_one(tmp_path):
    planted = tmp_path / f"{nc.CACHE_NAME}-{UID}"
    planted.mkdir()
    os.chmod(planted, 0o777)
    proc = _run("""
        import numba, os, stat
        check_kernel()
        import autodiff_lab
        from autodiff_lab.kernels import numba_cache
        chosen = numba.config.CACHE_DIR
        print("CHOSEN", chosen, oct(stat.S_IMODE(os.stat(chosen).st_mode)),
              numba_cache.caching_enabled)
    """, {"TMPDIR": str(tmp_path)}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    _, chosen, mode, enabled = proc.stdout.split()
    assert chosen != str(planted) and Path(chosen).parent == tmp_path
    assert Path(chosen).name.startswith(nc.CACHE_NAME + "-") and mode == "0o700"
    assert enabled == "True"
    assert "NumbaCacheWarning" in proc.stderr and "writable by other users" in proc.stderr
    assert not Path(chosen).exists()  # the fresh directory is removed at exit


@posix_only
def test_the_private_temporary_directory_is_created_and_used(tmp_path):
    proc = _run("""
        import numba
        check_kernel()
        print("CHOSEN", numba.config.CACHE_DIR)
    """, {"TMPDIR": str(tmp_path)}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = tmp_path / f"{nc.CACHE_NAME}-{UID}"
    assert proc.stdout.split() == ["CHOSEN", str(expected)]
    assert _mode(expected) == 0o700 and "Warning" not in proc.stderr


def test_the_package_imports_with_no_writable_temporary_directory(tmp_path):
    proc = _run(f"""
        import tempfile
        # what gettempdir does when no candidate folder is writable: FileNotFoundError
        tempfile.tempdir = None
        tempfile._candidate_tempdir_list = lambda: [{str(tmp_path / "a-file" / "tmp")!r}]
        try:
            tempfile.gettempdir()
        except FileNotFoundError:
            pass
        else:
            raise AssertionError("the patch did not take")
        import autodiff_lab as adl
        check_kernel()
        from autodiff_lab.kernels import numba_cache
        assert numba_cache.caching_enabled is False
        g = adl.trace(lambda x: adl.sum(adl.relu(x)), x=(4,))
        print("VALUE", float(adl.gradient(g, {{"x": np.arange(4.0)}}).value))
    """, {}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "VALUE 6.0" in proc.stdout
    assert "NumbaCacheWarning" in proc.stderr and "compiled again in every process" in proc.stderr
