"""Offline installs: a wheelhouse made through tools/wheelhouse.py from a package index (a tiny
one served on 127.0.0.1 here) installs into a fresh venv with the index switched off and
unreachable; the device bundle and tools/device_check.sh; and bootstrap's check that the
environment imports the project from this checkout."""
import base64
import hashlib
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / "tools" / "wheelhouse.py"


def _load(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


wh = _load("wheelhouse", WHEELHOUSE)


def write_wheel(folder: Path, name: str, version: str, requires=(), code="") -> Path:
    """A pure-Python wheel of one module ``name`` (PEP 427), written by hand."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": code or f"VERSION = {version!r}\n",
        f"{dist}/METADATA": "Metadata-Version: 2.1\n"
                            f"Name: {name.replace('_', '-')}\nVersion: {version}\n"
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


class Index:
    """A PEP 503 index of the given wheels on 127.0.0.1, counting the files it serves."""

    def __init__(self, root: Path, wheels):
        files = root / "files"
        files.mkdir(parents=True)
        links: dict[str, list[str]] = {}
        for wheel in wheels:
            (files / wheel.name).write_bytes(wheel.read_bytes())
            project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
            sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
            links.setdefault(project, []).append(
                f'<a href="../../files/{wheel.name}#sha256={sha}">{wheel.name}</a><br>')
        for project, anchors in links.items():
            (root / "simple" / project).mkdir(parents=True)
            (root / "simple" / project / "index.html").write_text(
                "<html><body>" + "".join(anchors) + "</body></html>\n")
        self.served = []
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(root), **k)

            def do_GET(self):
                if self.path.startswith("/files/"):
                    index.served.append(self.path.rsplit("/", 1)[1])
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def pip_env(**extra) -> dict:
    """This process's environment without any pip setting of the machine (config files,
    find-links, caches), so only what a test passes counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(extra)
    return env


@pytest.fixture
def tiny_index(tmp_path):
    built = tmp_path / "built"
    built.mkdir()
    wheels = [write_wheel(built, "tvtiny_a", "1.0", requires=["tvtiny-b>=1.0"],
                          code="import tvtiny_b\nVALUE = tvtiny_b.VALUE + 1\n"),
              write_wheel(built, "tvtiny_b", "1.0", code="VALUE = 41\n"),
              write_wheel(built, "tvtiny_b", "0.9", code="VALUE = 0\n")]
    index = Index(tmp_path / "index", wheels)
    yield index
    index.stop()


def test_wheelhouse_installs_with_the_index_off_and_unreachable(tmp_path, tiny_index):
    house = tmp_path / "house"
    req = tmp_path / "req.txt"
    req.write_text("tvtiny-a\n")
    out = subprocess.run([sys.executable, str(WHEELHOUSE), "download", str(house), "-r", str(req),
                          "--index-url", tiny_index.url, "--python-version", "3.12",
                          "--platform", "manylinux_2_28_x86_64"],
                         capture_output=True, text=True, env=pip_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["files"] == 2
    assert sorted(p.name for p in house.iterdir()) == [
        "tvtiny_a-1.0-py3-none-any.whl", "tvtiny_b-1.0-py3-none-any.whl"]  # the dependency too
    assert sorted(tiny_index.served) == sorted(p.name for p in house.iterdir())
    tiny_index.stop()  # from here on, nothing answers at the index's address

    exports = subprocess.run([sys.executable, str(WHEELHOUSE), "offline-env", str(house)],
                             capture_output=True, text=True, check=True).stdout
    offline = dict(shlex.split(line)[1].split("=", 1) for line in exports.splitlines())
    assert offline == {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(house.resolve())}
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    # any fetch from the index would fail: it is off, and its address is a dead port
    env = pip_env(PIP_INDEX_URL=tiny_index.url, **offline)
    out = subprocess.run([py, "-m", "pip", "install", "tvtiny-a"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    value = subprocess.run([py, "-c", "import tvtiny_a; print(tvtiny_a.VALUE)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert value.strip() == "42"

    # control: the same install from an empty folder fails, so the wheelhouse did the work
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run([py, "-m", "pip", "install", "--force-reinstall", "tvtiny-b"],
                         capture_output=True, text=True, timeout=300,
                         env=pip_env(PIP_INDEX_URL=tiny_index.url, PIP_NO_INDEX="1",
                                     PIP_FIND_LINKS=str(empty)))
    assert out.returncode != 0 and "No matching distribution" in out.stderr


def test_offline_env_refuses_what_is_no_wheelhouse(tmp_path):
    out = subprocess.run([sys.executable, str(WHEELHOUSE), "offline-env", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no such folder" in out.stderr and "make wheelhouse" in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, str(WHEELHOUSE), "offline-env", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "holds no wheel" in out.stderr


def test_bootstrap_goes_offline_through_the_same_exports():
    text = (ROOT / "tools" / "bootstrap.sh").read_text()
    assert 'tools/wheelhouse.py offline-env "$TINYVIT_WHEELHOUSE"' in text
    assert 'eval "$OFFLINE"' in text


def test_platform_tags_include_older_glibc():
    tags = wh.platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "manylinux1_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags
    assert wh.platform_tags("manylinux2014_aarch64")[0] == "manylinux_2_17_aarch64"
    assert wh.platform_tags("macosx_11_0_arm64") == ["macosx_11_0_arm64"]
    cmd = wh.download_command(Path("d"), ["x"], python_version="3.12",
                              platforms=["manylinux_2_28_x86_64"])
    assert "--only-binary=:all:" in cmd and cmd[cmd.index("--python-version") + 1] == "3.12"
    with pytest.raises(wh.WheelhouseError, match="expected such as 3.12"):
        wh.download_command(Path("d"), ["x"], python_version="312")


def test_wheelhouse_lists_everything_bootstrap_installs():
    """bootstrap's pip calls name packages; the wheelhouse must download each of them."""
    text = (ROOT / "tools" / "bootstrap.sh").read_text()
    named = set()
    for line in re.findall(r'"\$\{PIP\[@\]\}" install "\$\{C\[@\]\}" ([^\n]*)', text):
        for token in shlex.split(line.replace("\\", "")):
            if token.startswith(".["):  # the project itself, with its extras
                assert tuple(token[2:-1].split(",")) == wh.PROJECT_EXTRAS
            elif not token.startswith(("-", "$", "\"")):
                named.add(re.split(r"[<>=]", token)[0])
    covered = {re.split(r"[<>=\[]", r)[0] for r in
               wh.BOOTSTRAP_PACKAGES + wh.BOOTSTRAP_NO_DEPS + (wh.MMCV, "mmcv-lite")}
    assert named and named <= covered, named - covered
    assert {"mmdet", "mmsegmentation", "pytest", "onnxruntime"} <= {
        re.split(r"[<>=\[]", r)[0] for r in wh.project_requirements()}


def test_bundle_is_pinned_checked_for_size_and_replaced_whole(tmp_path, tiny_index):
    spec = tmp_path / "spec.txt"
    spec.write_text("# carried\ntvtiny-a==1.0\ntvtiny-b==1.0  # its dependency, listed\n")
    dest = tmp_path / "bundle"
    manifest = wh.bundle(dest, spec=spec, index_url=tiny_index.url)
    assert [w["file"] for w in manifest["wheels"]] == [
        "tvtiny_a-1.0-py3-none-any.whl", "tvtiny_b-1.0-py3-none-any.whl"]
    assert json.loads((dest / "MANIFEST.json").read_text()) == manifest
    before = sorted(p.name for p in dest.iterdir())
    with pytest.raises(wh.WheelhouseError, match=r"over the 0.0001 MB limit; largest: tvtiny_"):
        wh.bundle(dest, spec=spec, index_url=tiny_index.url, max_mb=0.0001)
    assert sorted(p.name for p in dest.iterdir()) == before  # the old bundle is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle")] == []


def test_device_bundle_spec_is_pinned():
    reqs = wh.bundle_requirements()
    assert reqs and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", r) for r in reqs), reqs
    names = {r.split("==")[0] for r in reqs}
    assert {"mmengine", "mmdet", "mmsegmentation", "mmcv-lite", "ruff", "model-index"} <= names
    image = {line.split("==")[0].strip() for line in
             (ROOT / "tools" / "device_image.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    assert not names & image  # the bundle carries nothing the machine already has


DEVICE_CHECK = ROOT / "tools" / "device_check.sh"


@pytest.mark.parametrize("args, message", [
    ([], "OUTDIR is missing"),
    (["--only", "x"], "the first argument is OUTDIR"),
    (["out", "--timeout", "5m"], "expected whole seconds"),
    (["out", "--bundle", "/nonexistent"], "make device-bundle"),
    (["out", "--frobnicate"], "unknown argument --frobnicate"),
])
def test_device_check_refuses_bad_arguments(args, message, tmp_path):
    out = subprocess.run(["bash", str(DEVICE_CHECK), *args], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHON=sys.executable), timeout=120)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr


def test_device_check_installs_the_bundle_offline_and_reports(tmp_path, tiny_index):
    spec = tmp_path / "spec.txt"
    spec.write_text("tvtiny-a==1.0\ntvtiny-b==1.0\n")
    bundle = tmp_path / "bundle"
    wh.bundle(bundle, spec=spec, index_url=tiny_index.url)
    tiny_index.stop()
    out_dir, site = tmp_path / "out", tmp_path / "site"
    # an unknown section: the check refuses it at once, after the install and env.json
    out = subprocess.run(["bash", str(DEVICE_CHECK), str(out_dir), "--bundle", str(bundle),
                          "--target", str(site), "--python", sys.executable, "--timeout", "120",
                          "--only", "no-such-section"],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PIP_INDEX_URL=tiny_index.url))
    assert out.returncode == 2, out.stderr
    assert (site / "tvtiny_a.py").is_file() and (site / "tvtiny_b.py").is_file()
    env = json.loads((out_dir / "env.json").read_text())
    assert env["bundle"]["wheels"] == 2 and env["install"].startswith(str(site))
    assert env["packages"]["torch"] and env["mmcv_ops"] in ("compiled-cuda", "compiled-cpu", "none")
    log = (out_dir / "log.txt").read_text()
    assert "installing 2 wheels" in log and "no-such-section" in log
    # a second run finds the same bundle installed
    subprocess.run(["bash", str(DEVICE_CHECK), str(out_dir), "--bundle", str(bundle), "--target",
                    str(site), "--python", sys.executable, "--only", "no-such-section"],
                   capture_output=True, text=True, timeout=300)
    assert "already installed" in (out_dir / "log.txt").read_text()


# --------------------------------------------------------------- the editable install's checkout

def _editable_here(py: Path, root: Path, cwd: Path) -> int:
    """bootstrap.sh's own editable_here function, run as bootstrap runs it (from the checkout)."""
    text = (ROOT / "tools" / "bootstrap.sh").read_text()
    func = re.search(r"^editable_here\(\) \{\n.*?^\}\n", text, re.S | re.M)[0]
    script = f"{func}\nPY={shlex.quote(str(py))}\nROOT={shlex.quote(str(root))}\neditable_here\n"
    return subprocess.run(["bash", "-c", script], cwd=cwd, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).returncode


def _clone(path: Path) -> Path:
    for package in ("tinyvit_backbone", "linear_probe"):
        (path / package).mkdir(parents=True)
        (path / package / "__init__.py").write_text("")
    (path / "tools").mkdir()
    (path / "tools" / "check_env.py").symlink_to(ROOT / "tools" / "check_env.py")
    return path


def test_editable_check_sees_the_install_not_the_current_folder(tmp_path):
    """A second clone sharing a cached environment whose editable install points at the first:
    run from the second clone, the check must say no (it used to import from the current folder
    and say yes, while console scripts kept importing the first clone)."""
    first, second = _clone(tmp_path / "first"), _clone(tmp_path / "second")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "__editable__.tinyvit_transfer.pth").write_text(f"{first}\n")  # as pip -e writes it
    py = venv / "bin" / "python"
    assert _editable_here(py, first, cwd=first) == 0
    assert _editable_here(py, second, cwd=second) == 1
    assert _editable_here(py, second, cwd=second) == 1
    (site / "__editable__.tinyvit_transfer.pth").write_text(f"{second}\n")  # re-pointed
    assert _editable_here(py, second, cwd=second) == 0
