"""Interop fixtures: the libcni driver (Go reference runtime), built once and cached by source hash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nsutil import Netns

GODRIVER_SRC = Path(__file__).parent / "godriver" / "main.go"
GOPATH_DIRS = ("/usr/share/gocode",)
LIBCNI_API = Path(GOPATH_DIRS[0]) / "src/github.com/containernetworking/cni/libcni/api.go"
GO_PLUGIN_DIR = "/usr/lib/cni"


def _private_dir(path: Path) -> bool:
    """A build directory we may reuse: ours, a real directory, writable by nobody else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def build_godriver(go: str) -> Path:
    """Build godriver/main.go, or reuse the binary built from the same source and Go version."""
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(GODRIVER_SRC.read_bytes() + version.encode()).hexdigest()[:16]
    out_dir = Path(tempfile.gettempdir()) / f"podnet-godriver-{key}"
    out_dir.mkdir(mode=0o700, exist_ok=True)
    if not _private_dir(out_dir):
        out_dir = Path(tempfile.mkdtemp(prefix="podnet-godriver-"))
    binary = out_dir / "godriver"
    if binary.exists():
        return binary
    env = {
        **os.environ,
        "GOPATH": os.pathsep.join(GOPATH_DIRS),
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOCACHE": str(out_dir / "gocache"),
        "CGO_ENABLED": "0",
    }
    partial = out_dir / f"godriver.{os.getpid()}.tmp"
    res = subprocess.run(
        [go, "build", "-o", str(partial), GODRIVER_SRC.name],
        cwd=GODRIVER_SRC.parent, env=env, capture_output=True, text=True, timeout=600,
    )
    if res.returncode != 0:
        raise RuntimeError(f"building the libcni driver failed:\n{res.stderr}")
    os.rename(partial, binary)  # atomic: a concurrent session sees either no binary or a whole one
    shutil.rmtree(env["GOCACHE"], ignore_errors=True)  # only the binary is reused
    return binary


@pytest.fixture(scope="session")
def libcni_driver() -> Path:
    """Path of the built libcni driver (see godriver/main.go for its command line)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs Go (Debian's golang-go) to build the libcni driver")
    if not LIBCNI_API.exists():
        pytest.skip(f"needs the libcni sources (Debian's golang-github-appc-cni-dev) at {LIBCNI_API.parent}")
    return build_godriver(go)


@dataclass
class GoRuntime:
    """libcni, run through the driver inside a node namespace (never in the machine's own one)."""

    driver: Path
    node: Netns
    cni_path: str = GO_PLUGIN_DIR

    def run(
        self, cmd: str, conf: str | os.PathLike[str], container_id: str, ifname: str = "eth0", *,
        netns: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
        args: Sequence[tuple[str, str]] = (), cap_args: Mapping[str, Any] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.driver), cmd, "--conf", str(conf),
                "--container-id", container_id, "--ifname", ifname]
        if netns is not None:
            argv += ["--netns", netns]
        if cache_dir is not None:
            argv += ["--cache-dir", str(cache_dir)]
        if args:
            argv += ["--args", ";".join(f"{k}={v}" for k, v in args)]
        if cap_args:
            argv += ["--cap-args", json.dumps(cap_args)]
        res = self.node.run(argv, check=False, env={**os.environ, "CNI_PATH": self.cni_path})
        if check and res.returncode != 0:
            raise AssertionError(f"godriver {cmd} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def json(self, cmd: str, conf: str | os.PathLike[str], container_id: str, ifname: str = "eth0",
             **kw: Any) -> Any:
        """Run a command that prints JSON and return it parsed."""
        return json.loads(self.run(cmd, conf, container_id, ifname, **kw).stdout)


@pytest.fixture
def go_runtime(libcni_driver: Path, node: Netns) -> GoRuntime:
    """libcni driving plugins from /usr/lib/cni inside this test's node namespace."""
    return GoRuntime(libcni_driver, node)
