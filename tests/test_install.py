"""Install orders and where the compiled kernels are cached (issue 16, item 1).

``pip install .``, a run, then ``pip install -e .`` used to break pintopt everywhere: numba had
cached compiled kernels in ``site-packages/pintopt/kernels/__pycache__``, ``pip`` does not remove
files it did not install, and the leftover ``site-packages/pintopt`` folder (no ``__init__.py``)
was then imported as an empty namespace package ahead of the editable install. The kernels now
cache in ``pintopt.kernels.cache_dir()`` (a per-user folder, see docs/packaging.md).

``test_install_orders`` builds a scratch virtual environment that reuses this environment's
packages (a ``.pth`` file pointing to a mirror of its site-packages without pintopt), so pip
installs only pintopt, offline, without build isolation. It is marked ``slow`` (32 s at load 5 on
2 cores: eight pip runs and 21 interpreter starts); it runs in the full suite and in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env

from pintopt import __version__


def _setuptools_ok() -> bool:
    # PEP 660 editable wheels need setuptools >= 64, wheels without the `wheel` package >= 70.1
    try:
        major, minor = (int(x) for x in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1)


def _copy_checkout(dst: Path) -> Path:
    """The files a user's clone has (what pip builds from), without build products."""
    shutil.copytree(REPO, dst, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", "venv", ".pytest_cache",
        ".ruff_cache", ".hypothesis", "*.h5", "*.log"))
    return dst


class Scratch:
    """A virtual environment in ``root/venv`` with this environment's packages but not pintopt."""

    def __init__(self, root: Path, clone: Path) -> None:
        self.root, self.clone = root, clone
        self.venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)], check=True)
        self.python = self.venv / "bin" / "python"
        self.site = Path(subprocess.run(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True).stdout.strip())
        # Mirror of this environment's site-packages minus pintopt (regular or editable) and
        # minus the .pth hooks; added to the scratch path by a .pth file (after its own packages).
        deps = root / "deps"
        deps.mkdir()
        here = Path(sysconfig.get_paths()["purelib"])
        for entry in here.iterdir():
            name = entry.name.lower()
            if name.startswith(("pintopt", "__editable__", "__pycache__")) or name.endswith(
                    (".pth", ".egg-link")):
                continue
            (deps / entry.name).symlink_to(entry)
        (self.site / "_scratch_deps.pth").write_text(f"{deps}\n")
        # Shared libraries installed beside this environment's interpreter (the mpich wheel's
        # libmpi, which mpi4py looks for in sys.prefix/lib).
        lib = Path(sys.prefix) / "lib"
        for entry in lib.iterdir() if lib.is_dir() else ():
            target = self.venv / "lib" / entry.name
            if not entry.name.startswith("python") and not target.exists():
                target.symlink_to(entry)
        self.cache_home = root / "xdg-cache"
        self.outside = root / "outside"
        self.outside.mkdir()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTHON", "NUMBA_CACHE", "VIRTUAL_ENV", "__PYVENV"))}
        env.update(PATH=f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                   VIRTUAL_ENV=str(self.venv), XDG_CACHE_HOME=str(self.cache_home),
                   OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PIP_NO_INPUT="1",
                   PIP_DISABLE_PIP_VERSION_CHECK="1")
        self.env = env

    def run(self, args: list, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(a) for a in args], cwd=cwd, env=self.env, capture_output=True,
                              text=True, timeout=240)
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(map(str, args))} (in {cwd}) exited {proc.returncode}:\n"
                        f"{proc.stdout}\n{proc.stderr}")
        return proc

    def pip(self, *args: str) -> None:
        """``python -m pip ARGS`` in the clone, as docs/getting-started.md has it."""
        self.run([self.python, "-m", "pip", "-q", *args], cwd=self.clone)

    def install(self, editable: bool = False) -> None:
        self.pip("install", "--no-deps", "--no-build-isolation", *(["-e"] if editable else []), ".")

    def uninstall(self) -> None:
        self.pip("uninstall", "-y", "pintopt")

    def check(self, cwd: Path, origin: Path) -> None:
        """From ``cwd``: the console script and ``python -m pintopt`` print the version, and a
        kernel imports and runs; pintopt comes from ``origin`` (the folder holding ``pintopt/``
        and the kernels) and caches its compiled kernels in the user's cache folder."""
        kernels = origin / "pintopt" / "kernels" if origin == self.site else origin / "kernels"
        cmds = [[self.venv / "bin" / "pintopt", "--version"],
                [self.python, "-m", "pintopt", "--version"],
                [self.python, "-c", _KERNEL]]
        procs = [subprocess.Popen([str(a) for a in cmd], cwd=cwd, env=self.env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for cmd in cmds]
        outs = [p.communicate(timeout=240) for p in procs]
        for cmd, p, (out, err) in zip(cmds, procs, outs):
            assert p.returncode == 0, f"{' '.join(map(str, cmd))} in {cwd}:\n{out}\n{err}"
        for out, err in outs[:2]:
            assert __version__ in out + err, (out, err)
        init, residual, cache = outs[2][0].split()
        assert Path(init).resolve() == (origin / "pintopt" / "__init__.py").resolve()
        assert Path(residual).resolve() == (kernels / "residual.py").resolve()
        assert Path(cache).is_relative_to(self.cache_home / "pintopt" / "numba"), cache
        assert list(Path(cache).glob("activations.sigma-*.nbi")), "nothing cached"
        assert not list(kernels.rglob("*.nb[ic]")), "compiled kernels cached beside the sources"

    def leftovers(self) -> list[str]:
        """What a pip uninstall left of pintopt in site-packages."""
        return sorted(str(p.relative_to(self.site)) for p in self.site.iterdir()
                      if p.name.lower().startswith(("pintopt", "__editable__")))


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    if not _setuptools_ok():
        pytest.skip("needs setuptools >= 70.1 in the test environment (the `test` extra)")
    return Scratch(tmp_path, _copy_checkout(tmp_path / "clone"))


_COMPILE = textwrap.dedent("""
    from pintopt.kernels import activations as A
    assert A.sigma(-0.5, A.RELU) == 0.0
    print(A.sigma.stats.cache_path)
""")
_KERNEL = "import pintopt, pintopt.kernels.residual as r; print(pintopt.__file__, r.__file__)\n" + (
    _COMPILE)


@pytest.mark.slow
def test_install_orders(scratch: Scratch) -> None:
    s = scratch
    # 1.-2. the sequence of issue 16: getting-started's line 1 (a regular install), a run from
    # outside the clone that compiles a kernel, then line 2 (an editable install)
    s.install()
    s.check(s.outside, s.site)
    s.install(editable=True)
    s.check(s.outside, s.clone)
    s.check(s.clone, s.clone)
    assert not (s.site / "pintopt").exists(), "a leftover folder shadows the editable install"
    # 3. editable -> regular; inside the clone, python -m runs the clone (cwd first on the path)
    s.install()
    s.check(s.outside, s.site)
    s.check(s.clone, s.clone)
    # 4. uninstall (after runs) leaves nothing behind; reinstall
    s.uninstall()
    assert s.leftovers() == []
    s.install()
    s.check(s.outside, s.site)
    # 5. uninstall, then editable, uninstall
    s.uninstall()
    s.install(editable=True)
    s.check(s.outside, s.clone)
    s.uninstall()
    assert s.leftovers() == []


def _kernels_env(**extra: str) -> dict[str, str]:
    env = subprocess_env()
    for k in ("NUMBA_CACHE_DIR", "NUMBA_CACHE_LOCATOR_CLASSES"):
        env.pop(k, None)
    env.update(extra)
    return env


def test_numba_cache_dir_of_the_user_is_respected(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _COMPILE], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env=_kernels_env(NUMBA_CACHE_DIR=str(tmp_path)))
    cache = Path(out.stdout.strip())
    assert cache.parent.parent == tmp_path / "pintopt"
    assert list(cache.glob("activations.sigma-*.nbi"))


def test_cache_falls_back_to_a_private_temporary_folder(tmp_path: Path) -> None:
    # no writable home cache (XDG_CACHE_HOME under a regular file): $TMPDIR/pintopt-<uid>, 0700
    (tmp_path / "file").write_text("")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = _kernels_env(XDG_CACHE_HOME=str(tmp_path / "file" / "cache"), TMPDIR=str(tmp))
    out = subprocess.run([sys.executable, "-c", _COMPILE], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env=env)
    cache = Path(out.stdout.strip())
    private = tmp / f"pintopt-{os.getuid()}"
    assert cache.is_relative_to(private / "numba")
    assert private.stat().st_mode & 0o077 == 0
    assert list(cache.glob("activations.sigma-*.nbi"))


def test_cache_refuses_a_temporary_folder_others_can_write(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    tmp = tmp_path / "tmp"
    (tmp / f"pintopt-{os.getuid()}").mkdir(parents=True)
    (tmp / f"pintopt-{os.getuid()}").chmod(0o777)
    env = _kernels_env(XDG_CACHE_HOME=str(tmp_path / "file" / "cache"), TMPDIR=str(tmp))
    code = "from pintopt import kernels; print(kernels.cache_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env=env)
    assert out.stdout.strip() == "None"


def test_concurrent_processes_share_an_empty_cache(tmp_path: Path) -> None:
    """Ranks of one job starting at once: all compile or load correctly (numba writes each cache
    file under a temporary name and renames it into place), and a later process loads."""
    code = _COMPILE + "print(sum(A.sigma.stats.cache_hits.values()))\n"
    env = _kernels_env(NUMBA_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert len({o.split()[0] for o, _ in outs}) == 1
    later = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    assert later[1] == "1", "the later process compiled instead of loading the cache"


def test_kernels_cache_in_cache_dir_keyed_by_all_sources(tmp_path: Path) -> None:
    import pintopt.kernels as kernels
    from pintopt.kernels import activations

    # the locator is installed in this numba (a rename of its internals would fail here)
    assert Path(activations.sigma._cache.cache_path) == kernels.cache_dir()
    assert kernels.cache_dir().name == kernels.source_tag()
    # editing any kernel file changes the key, a copy with the same sources keeps it
    src = Path(kernels.__file__).parent
    for name in ("a", "b"):
        shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    assert kernels.source_tag(tmp_path / "a") == kernels.source_tag(src)
    edited = tmp_path / "b" / "activations.py"
    edited.write_text(edited.read_text() + "\n# an edit\n")
    assert kernels.source_tag(tmp_path / "b") != kernels.source_tag(src)


def test_stale_in_tree_cache_is_removed() -> None:
    # files an earlier version cached beside the sources (they made the leftover folder)
    import pintopt.kernels as kernels

    pycache = Path(kernels.__file__).parent / "__pycache__"
    pycache.mkdir(exist_ok=True)
    stale = [pycache / "zz_test.f-1.py311.nbi", pycache / "zz_test.f-1.py311.1.nbc"]
    kept = pycache / "zz_test.cpython-311.pyc"
    for p in (*stale, kept):
        p.write_bytes(b"")
    try:
        kernels._remove_in_tree_cache()
        assert not any(p.exists() for p in stale)
        assert kept.exists()
    finally:
        for p in (*stale, kept):
            p.unlink(missing_ok=True)


def test_import_pintopt_does_not_load_numba() -> None:
    code = "import sys, pintopt; print('numba' in sys.modules, 'pintopt.kernels' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, env=subprocess_env()).stdout.split()
    assert out == ["False", "False"]


def test_old_source_versions_are_pruned(tmp_path: Path) -> None:
    import pintopt.kernels as kernels

    now = time.time()
    used_ago = {"current": 0, "r1": 60, "r2": 120, "r3": 180, "old1": 7200, "old2": 9000}
    for name, age in used_ago.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.nbi").write_bytes(b"")
        os.utime(tmp_path / name, (now - age, now - age))
    # kept: the current version, the two most recently used others (r1, r2), and any used in the
    # last ten minutes (r3, possibly by a running process); old1 and old2 are deleted
    kernels._prune(tmp_path / "current")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "r1", "r2", "r3"]
