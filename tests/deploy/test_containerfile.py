"""deploy/Containerfile installs podnet exactly as the README tells a user to (its command line,
ending in the install target of `make demo`), copies what that install reads, and runs podnet."""

from __future__ import annotations

import json
import re
import shlex
import tomllib

from deploy.deployfiles import DEPLOY, REPO, container, environment

DEMO = "make demo"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of the Containerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / "Containerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Containerfile ends in a continuation line"
    return out


def readme_bootstrap() -> str:
    """What the README's one-line install runs before `make demo`."""
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines() if line.strip().endswith(DEMO)]
    assert len(lines) == 1, f"expected one README command ending in {DEMO!r}, found {lines}"
    return str(lines[0][:-len(DEMO)])


def make_rule(target: str) -> tuple[list[str], list[str]]:
    """The Makefile's (prerequisites, recipe lines) of ``target``."""
    text = (REPO / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:([^=\n]*)\n((?:\t.*\n?)*)", text, re.M)
    assert m, f"no rule for {target} in the Makefile"
    return m.group(1).split(), [line.strip() for line in m.group(2).splitlines()]


def make_variable(name: str) -> str:
    m = re.search(rf"^{name}\s*:?=\s*(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert m, f"no variable {name} in the Makefile"
    return m.group(1).strip()


def test_the_run_step_is_the_readme_install() -> None:
    prerequisites, recipe = make_rule("demo")
    # `make demo` = its prerequisites (the install) + running the demo, which a build cannot do
    # (it needs root and network namespaces); the image runs the install part of the same line.
    assert recipe and all(line.endswith("/bin/podnet demo") for line in recipe), recipe
    runs = [rest for keyword, rest in instructions() if keyword == "RUN"]
    assert runs == [readme_bootstrap() + "make " + " ".join(prerequisites)]


def test_it_starts_from_debian_12_and_copies_what_the_install_reads() -> None:
    steps = instructions()
    assert steps[0][0] == "FROM" and re.fullmatch(r"(docker\.io/(library/)?)?debian:12", steps[0][1])
    copied = [part.rstrip("/") for keyword, rest in steps if keyword == "COPY" for part in rest.split()[:-1]]
    _, install = make_rule(make_rule("demo")[0][0])
    wanted = {"Makefile", "pyproject.toml", "src"}
    wanted |= {re.sub(r"/.*", "", token) for line in install for token in shlex.split(line)
               if "/" in token and (REPO / token).exists()}  # scripts/..., the files the recipe runs
    wanted.add(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"])
    assert wanted <= set(copied), f"not copied: {wanted - set(copied)}"
    assert ".venv" not in copied and "." not in copied  # never a local checkout's venv or caches


def test_the_entrypoint_is_podnet_from_the_install_s_venv() -> None:
    steps = dict(instructions())  # one of each (the test below counts COPY apart)
    workdir, venv = steps["WORKDIR"], make_variable("VENV")
    assert steps["ENV"] == f"PATH={workdir}/{venv}/bin:$PATH"
    assert json.loads(steps["ENTRYPOINT"]) == ["podnet"]


def test_the_install_step_compiler_is_in_the_image_where_the_daemonset_says() -> None:
    workdir = dict(instructions())["WORKDIR"]
    copies = [rest.split() for keyword, rest in instructions() if keyword == "COPY"]
    assert ["deploy/cc-static", "deploy/cc-static"] in copies
    assert environment(container("install-cni"))["CC"] == f"{workdir}/deploy/cc-static"
    assert (DEPLOY / "cc-static").stat().st_mode & 0o111  # executable, as podnet install runs it
