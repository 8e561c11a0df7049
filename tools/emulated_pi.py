"""An emulated Raspberry Pi for the tests and CI: armhf Debian roots run through qemu-user.

    python -m tools.emulated_pi [--root DIR] [--check] [--benchmark-model FILE]

Builds (once; again when missing, incomplete or made by an older recipe) two armhf Debian
Bookworm roots, the userland of a 32-bit Raspberry Pi OS, whose ARM binaries the kernel hands
to ``qemu-arm-static`` through binfmt_misc (the ``F`` flag of Debian's handler makes that work
inside a chroot). The tests reach them over real SSH: a loopback sshd chroots its sessions into
one of them (``tests/emulated_pi_fixture.py``).

``pi/``    debootstrap minbase + python3, python3-numpy, pip, libstdc++6, busybox; the
           ``tflite-runtime`` wheel for armv7l installed with the root's own pip; the real TF-Lite
           1.13.1 ``benchmark_model`` binary as ``/usr/local/bin/benchmark_model``.
``bare/``  a device with no Python at all: bash (the login shell), busybox for the usual
           commands, ``benchmark_model`` and exactly the shared libraries these three load.

The roots live outside the checkout (default ``~/.cache/netadapt-lut/emulated-pi``, or env
``NETADAPT_EMULATED_PI``). A build goes into a temporary sibling directory that is renamed into
place only after a smoke check passed and ``stamp.json`` (what is inside, and the recipe that
made it) was written; a killed build is therefore redone on the next run. Needs root (debootstrap,
chroot, binfmt_misc) and the Debian packages ``debootstrap`` and ``qemu-user-static``.
``--check`` builds nothing: exit status 0 when the roots are complete, 1 (with the reason)
otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_BENCHMARK_MODEL = CHECKOUT / "tests" / "data" / "armhf" / "benchmark_model-tflite-1.13.1"
BENCHMARK_MODEL_SHA256 = "6f7253784f474b7e47cd5131f9b6ec6904dde7cc5f5db505f0019bdbc7881b35"
BENCHMARK_MODEL_VERSION = "1.13.1"
TFLITE_RUNTIME_VERSION = "2.14.0"
DEVICE_BENCHMARK_MODEL = "/usr/local/bin/benchmark_model"  # where both roots have it
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-arm.conf")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Everything that decides what a root holds; a stamp made from another recipe means "rebuild".
RECIPE = {
    "format": 1,
    "suite": "bookworm",
    "arch": "armhf",
    "variant": "minbase",
    "include": ["python3", "python3-numpy", "python3-pip", "libstdc++6", "busybox"],
    "tflite_runtime": TFLITE_RUNTIME_VERSION,
    "wheel_platform": "manylinux_2_34_armv7l",
    "wheel_python": "3.11",
    "benchmark_model_sha256": BENCHMARK_MODEL_SHA256,
    "bare": ["bash", "busybox", "benchmark_model"],
}
STAMP = "stamp.json"
VARIANTS = ("pi", "bare")
# files a finished root must hold (a stamp next to a half-deleted root is not a root)
REQUIRED = {
    "pi": ("usr/bin/python3", "usr/bin/bash", "usr/bin/uname", DEVICE_BENCHMARK_MODEL.lstrip("/"), "etc/passwd"),
    "bare": ("usr/bin/bash", "usr/bin/busybox", DEVICE_BENCHMARK_MODEL.lstrip("/"), "etc/passwd",
             "usr/lib/ld-linux-armhf.so.3"),
}


class EmulatedPiError(RuntimeError):
    """The emulated Pi cannot be built or used here; the message says what to install or do."""


def default_root() -> Path:
    """Where the roots live: env NETADAPT_EMULATED_PI, else ~/.cache/netadapt-lut/emulated-pi."""
    env = os.environ.get("NETADAPT_EMULATED_PI")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "netadapt-lut" / "emulated-pi"


def benchmark_model_source() -> Path:
    """The armhf benchmark_model to install: env NETADAPT_BENCHMARK_MODEL, else the copy in tests/data/armhf."""
    env = os.environ.get("NETADAPT_BENCHMARK_MODEL")
    return Path(env).expanduser() if env else DEFAULT_BENCHMARK_MODEL


def read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return None


def root_problem(root: Path | None = None) -> str | None:
    """Why `root` is not a complete emulated Pi (None when it is)."""
    root = root or default_root()
    if not root.is_dir():
        return f"no emulated Pi at {root}"
    stamp = read_stamp(root)
    if stamp is None:
        return f"{root} has no {STAMP}: a build was interrupted or it was not made by this tool"
    if stamp.get("recipe") != RECIPE:
        return f"{root} was built by another recipe (this tool changed since)"
    missing = [f"{v}/{f}" for v, files in REQUIRED.items() for f in files if not os.path.lexists(root / v / f)]
    if missing:
        return f"{root} is incomplete: missing {', '.join(missing)}"
    return None


def binfmt_problem() -> str | None:
    """Why ARM binaries cannot run here through binfmt_misc (inside a chroot), or None."""
    entry = BINFMT_DIR / "qemu-arm"
    try:
        text = entry.read_text()
    except OSError:
        return (f"the qemu-arm binfmt_misc handler is not registered ({entry} missing): "
                "run `python -m tools.emulated_pi` as root (it registers it), or install qemu-user-static "
                "and binfmt-support")
    if not text.startswith("enabled"):
        return f"the qemu-arm binfmt_misc handler is disabled: `echo 1 > {entry}` as root"
    flags = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags:")), "")
    if "F" not in flags:
        return (f"the qemu-arm binfmt_misc handler lacks the F flag (flags {flags!r}), so it does not work inside a "
                f"chroot: `echo -1 > {entry}` as root, then run `python -m tools.emulated_pi`")
    return None


def ensure_binfmt() -> None:
    """Registers Debian's qemu-arm handler (with its F flag) when it is not; needs root."""
    if binfmt_problem() is None:
        return
    if os.geteuid() != 0:
        raise EmulatedPiError(f"{binfmt_problem()} (registering it needs root)")
    if not BINFMT_CONF.is_file():
        raise EmulatedPiError(f"{BINFMT_CONF} missing: `apt-get install qemu-user-static`")
    if not (BINFMT_DIR / "register").exists():
        BINFMT_DIR.mkdir(parents=True, exist_ok=True)
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mounting binfmt_misc")
    entry = BINFMT_DIR / "qemu-arm"
    if entry.exists():  # registered without F (e.g. by an older binfmt-support): replace it
        entry.write_text("-1")
    line = next(ln for ln in BINFMT_CONF.read_text().splitlines() if ln.startswith(":qemu-arm:"))
    (BINFMT_DIR / "register").write_text(line)
    problem = binfmt_problem()
    if problem:
        raise EmulatedPiError(f"registering qemu-arm did not take: {problem}")


# ------------------------------------------------------------------------------------- building


def _log(start: float, message: str) -> None:
    print(f"[emulated-pi {time.monotonic() - start:6.0f} s] {message}", flush=True)


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, text=True, capture_output=True, **kwargs)
    if result.returncode != 0:
        out = (result.stdout + result.stderr).strip()
        raise EmulatedPiError(f"{what} failed (status {result.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    return result


def _chroot(root: Path, *args: str, what: str) -> str:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8", "HOME": "/root"}
    return _run(["chroot", str(root), *args], what, env=env).stdout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf of a (partial) root: first unmount what debootstrap may have left mounted in it
    (/proc, /sys of a killed build), then never cross into another file system."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True)
    if os.path.lexists(path):
        _run(["rm", "-rf", "--one-file-system", str(path)], f"removing {path}")


def _check_prerequisites(benchmark_model: Path) -> None:
    if os.geteuid() != 0:
        raise EmulatedPiError("building the emulated Pi needs root (debootstrap and chroot): run it with sudo")
    missing = [tool for tool in ("debootstrap", "chroot") if shutil.which(tool) is None]
    if missing or not Path("/usr/bin/qemu-arm-static").exists():
        raise EmulatedPiError("missing tools: `apt-get install debootstrap qemu-user-static` "
                              f"({', '.join(missing) or 'qemu-arm-static'} not found)")
    if not benchmark_model.is_file():
        raise EmulatedPiError(f"benchmark_model binary {benchmark_model} not found: set NETADAPT_BENCHMARK_MODEL "
                              "(or --benchmark-model) to the armhf TF-Lite 1.13.1 binary")
    digest = _sha256(benchmark_model)
    if digest != BENCHMARK_MODEL_SHA256:
        raise EmulatedPiError(f"{benchmark_model} has sha256 {digest}, not the TF-Lite 1.13.1 armhf binary's "
                              f"{BENCHMARK_MODEL_SHA256}")


def _debootstrap(target: Path, start: float) -> None:
    mirror = os.environ.get("NETADAPT_DEBIAN_MIRROR", DEFAULT_MIRROR)
    cmd = ["debootstrap", f"--arch={RECIPE['arch']}", f"--variant={RECIPE['variant']}",
           f"--include={','.join(RECIPE['include'])}", RECIPE["suite"], str(target), mirror]
    _log(start, "debootstrap: " + " ".join(cmd))
    log_path = target.parent / f"{target.parent.name}-debootstrap.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                text = line[2:].strip() if line.startswith("I:") else ""
                if text.startswith(_DEBOOTSTRAP_STAGES):  # its stages, not a line per package
                    _log(start, "debootstrap: " + text)
            status = proc.wait()
        except BaseException:
            proc.kill()  # interrupted: stop it before its target is removed
            proc.wait()
            raise
    if status != 0:
        tail = log_path.read_text()[-3000:]
        raise EmulatedPiError(f"debootstrap failed (status {status}); its log ends:\n{tail}")
    log_path.unlink()


_DEBOOTSTRAP_STAGES = ("Retrieving InRelease", "Resolving dependencies of base", "Installing core",
                       "Unpacking required", "Configuring required", "Unpacking the base", "Configuring the base",
                       "Base system")


def _install_tflite_runtime(pi: Path, start: float) -> None:
    wheels = pi / "tmp" / "wheels"
    wheels.mkdir()
    _log(start, f"downloading the tflite-runtime {TFLITE_RUNTIME_VERSION} armv7l wheel")
    _run([sys.executable, "-m", "pip", "download", "-q", f"tflite-runtime=={TFLITE_RUNTIME_VERSION}",
          "--platform", RECIPE["wheel_platform"], "--python-version", RECIPE["wheel_python"],
          "--only-binary=:all:", "--no-deps", "-d", str(wheels)], "pip download tflite-runtime")
    wheel = next(wheels.glob("tflite_runtime-*.whl"))
    _log(start, f"installing {wheel.name} with the root's pip (numpy is Debian's)")
    _chroot(pi, "python3", "-m", "pip", "install", "-q", "--no-index", "--no-cache-dir", "--break-system-packages",
            "--no-deps", f"/tmp/wheels/{wheel.name}", what="pip install tflite-runtime in the root")
    shutil.rmtree(wheels)


def _copy_from(src_root: Path, dst_root: Path, path: str) -> None:
    """Copies `path` (absolute, as the root sees it) from one root to the other, keeping the
    symlink by which it was named and the file it points to."""
    real = _chroot(src_root, "readlink", "-f", path, what=f"resolving {path}").strip()
    real_dir = _chroot(src_root, "readlink", "-f", os.path.dirname(path), what=f"resolving {path}").strip()
    target = dst_root / real.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copy2(src_root / real.lstrip("/"), target)
    alias = dst_root / real_dir.lstrip("/") / os.path.basename(path)
    if not os.path.lexists(alias):
        alias.parent.mkdir(parents=True, exist_ok=True)
        alias.symlink_to(os.path.relpath(target, alias.parent))


def _libraries(root: Path, binary: str) -> list[str]:
    """The shared libraries `binary` loads (ldd inside the root), and the loader itself."""
    out = _chroot(root, "ldd", binary, what=f"ldd {binary}")
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            path = parts[parts.index("=>") + 1]
            if path == "not":
                raise EmulatedPiError(f"{binary} needs a library the root lacks: {line.strip()}")
            libs.append(path)
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])  # the loader, /lib/ld-linux-armhf.so.3
    return libs


def _make_bare(pi: Path, bare: Path, start: float) -> list[str]:
    """The Python-less device: bash, busybox applets, benchmark_model and their libraries."""
    _log(start, "bare root: bash, busybox, benchmark_model and their libraries (no Python)")
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/local/bin", "etc", "root", "tmp", "dev", "proc", "sys"):
        (bare / d).mkdir(parents=True, exist_ok=True)
    for link, to in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        (bare / link).symlink_to(to)
    os.chmod(bare / "tmp", 0o1777)
    os.chmod(bare / "root", 0o700)
    binaries = ["/usr/bin/bash", "/usr/bin/busybox", DEVICE_BENCHMARK_MODEL]
    files = set(binaries)
    for binary in binaries:
        files.update(_libraries(pi, binary))
    for path in sorted(files):
        _copy_from(pi, bare, path)
    # the commands a device shell offers (cat, rm, sha256sum, uname, ...), from busybox
    applets = _chroot(pi, "busybox", "--list-full", what="busybox --list-full").split()
    for applet in applets:
        link = bare / "usr" / Path(applet).parent.name / Path(applet).name  # bin/cat -> usr/bin/cat
        if not os.path.lexists(link):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(bare / "usr/bin/busybox", link.parent))
    sh = bare / "usr/bin/sh"
    if not os.path.lexists(sh):
        sh.symlink_to("busybox")
    for name in ("passwd", "group", "nsswitch.conf", "hostname"):
        if (pi / "etc" / name).exists():
            shutil.copy2(pi / "etc" / name, bare / "etc" / name)
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        if os.path.lexists(pi / "dev" / node):
            _run(["cp", "-a", str(pi / "dev" / node), str(bare / "dev" / node)], f"copying /dev/{node}")
    return sorted(files)


def _smoke_check(pi: Path, bare: Path) -> dict:
    """What the finished roots report about themselves (raises when something is off)."""
    machine = _chroot(pi, "uname", "-m", what="uname -m in the root").strip()
    if not machine.startswith("armv7"):
        raise EmulatedPiError(f"the root reports machine {machine!r}, not armv7l: is binfmt's qemu-arm active?")
    probe = ("import platform, numpy, tflite_runtime, json; print(json.dumps({'python': platform.python_version(), "
             "'machine': platform.machine(), 'numpy': numpy.__version__, 'tflite_runtime': tflite_runtime.__version__}))")
    found = json.loads(_chroot(pi, "python3", "-c", probe, what="importing tflite_runtime in the root").strip())
    if found["tflite_runtime"] != TFLITE_RUNTIME_VERSION:
        raise EmulatedPiError(f"tflite_runtime {found['tflite_runtime']} in the root, expected {TFLITE_RUNTIME_VERSION}")
    libs = _chroot(bare, "/usr/lib/ld-linux-armhf.so.3", "--list", DEVICE_BENCHMARK_MODEL,
                   what="loading benchmark_model in the bare root")
    if "not found" in libs:
        raise EmulatedPiError(f"benchmark_model lacks libraries in the bare root:\n{libs}")
    bare_python = subprocess.run(["chroot", str(bare), "/usr/bin/sh", "-c", "command -v python3 python"],
                                 capture_output=True, text=True)
    if bare_python.stdout.strip():
        raise EmulatedPiError(f"the bare root has a Python: {bare_python.stdout.strip()}")
    bare_machine = _chroot(bare, "uname", "-m", what="uname -m in the bare root").strip()
    return {"pi": found, "bare": {"machine": bare_machine, "python": None}}


def build(root: Path, benchmark_model: Path) -> dict:
    """Builds the roots into a temporary sibling of `root`, then renames it into place."""
    start = time.monotonic()
    _check_prerequisites(benchmark_model)
    ensure_binfmt()
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f"{root.name}.build-*"):  # left by a killed build
        _log(start, f"removing the leftovers of an interrupted build: {stale}")
        remove_tree(stale)
    work = Path(tempfile.mkdtemp(prefix=f"{root.name}.build-", dir=root.parent))
    try:
        os.chmod(work, 0o755)  # sshd's ChrootDirectory: root-owned, not group/world writable
        pi, bare = work / "pi", work / "bare"
        _debootstrap(pi, start)
        _install_tflite_runtime(pi, start)
        _log(start, f"benchmark_model {BENCHMARK_MODEL_VERSION} -> {DEVICE_BENCHMARK_MODEL}")
        installed = pi / DEVICE_BENCHMARK_MODEL.lstrip("/")
        shutil.copyfile(benchmark_model, installed)
        os.chmod(installed, 0o755)
        _chroot(pi, "apt-get", "clean", what="apt-get clean")
        bare_files = _make_bare(pi, bare, start)
        _log(start, "smoke check: uname, tflite_runtime, benchmark_model's libraries, no Python in bare/")
        found = _smoke_check(pi, bare)
        seconds = round(time.monotonic() - start, 1)
        stamp = {
            "recipe": RECIPE,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": seconds,
            "host": platform.node(),
            "device_benchmark_model": DEVICE_BENCHMARK_MODEL,
            "benchmark_model_version": BENCHMARK_MODEL_VERSION,
            "pi": {**found["pi"], "packages": _chroot(pi, "dpkg-query", "-W", "-f", "${Package}=${Version}\n",
                                                       what="listing packages").split()},
            "bare": {**found["bare"], "files": bare_files},
        }
        (work / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        if os.path.lexists(root):
            old = root.with_name(f"{root.name}.build-old-{os.getpid()}")
            os.rename(root, old)
            os.rename(work, root)
            remove_tree(old)
        else:
            os.rename(work, root)
    except BaseException:
        remove_tree(work)
        raise
    _log(start, f"done: {root} ({seconds:.0f} s)")
    return stamp


def tree_size(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.emulated_pi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="where the roots live (default: env NETADAPT_EMULATED_PI or ~/.cache/netadapt-lut/emulated-pi)")
    parser.add_argument("--benchmark-model", type=Path, default=None,
                        help="the armhf TF-Lite 1.13.1 benchmark_model (default: env NETADAPT_BENCHMARK_MODEL, else "
                             "tests/data/armhf/benchmark_model-tflite-1.13.1)")
    parser.add_argument("--check", action="store_true", help="build nothing; exit 1 when the roots are not complete")
    args = parser.parse_args(argv)
    # a terminated build cleans up like an interrupted one (SIGKILL leaves it to the next run)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = (args.root.expanduser() if args.root else default_root()).absolute()
    problem = root_problem(root)
    if args.check:
        problem = problem or binfmt_problem()
        print(problem or f"emulated Pi complete at {root}")
        return 1 if problem else 0
    try:
        if problem is None:
            ensure_binfmt()
            stamp = read_stamp(root) or {}
            print(f"emulated Pi complete at {root} (built {stamp.get('built_at')} in {stamp.get('build_seconds')} s); "
                  "nothing to do")
            return 0
        print(f"building: {problem}", flush=True)
        build(root, (args.benchmark_model or benchmark_model_source()).expanduser())
    except EmulatedPiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"size: {tree_size(root) / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
