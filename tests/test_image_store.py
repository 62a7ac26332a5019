"""The image store and recipes without a build: imports of small hand-made tarballs through
the real safe importer, names swapped and removed, concurrent imports, export round trips,
recipe and package-name validation, and the errors a build gives before it starts."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from isol8.errors import InvalidRequest, Isol8Error
from isol8.images import build as image_build
from isol8.images import recipes
from isol8.images.command import export, import_image
from isol8.images.store import ImageNotFound, ImageStore

ROOTFS = Path(__file__).resolve().parent.parent / "rootfs"


def make_tar(path: Path, files: dict[str, bytes], *, dirs: dict[str, int] | None = None,
             links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, mode in (dirs or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def tree(root: str) -> dict[str, tuple[str, int, str]]:
    """path -> (kind, permission bits, content or link target), for comparing two trees."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(top, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", 0, os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", st.st_mode & 0o7777, "")
            else:
                out[rel] = ("file", st.st_mode & 0o7777, Path(p).read_bytes().hex())
    return out


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore(str(tmp_path / "store"))


@pytest.fixture
def rootfs_tar(tmp_path) -> Path:
    return make_tar(tmp_path / "rootfs.tar",
                    {"usr/bin/hello": b"#!/bin/sh\necho hello\n", "etc/os-release": b"ID=t\n",
                     "usr/lib/locked/data": b"x" * 100},
                    dirs={"usr": 0o755, "usr/bin": 0o755, "usr/lib": 0o755,
                          "usr/lib/locked": 0o555, "etc": 0o755},
                    links={"bin": "usr/bin"})


def cli(store: ImageStore, *args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = {**os.environ, "ISOL8_IMAGES": store.root}
    return subprocess.run([sys.executable, "-m", "isol8", "image", *args], env=env,
                          stdout=stdout, stderr=subprocess.PIPE, timeout=120,
                          text=stdout == subprocess.PIPE)


def leftovers(store: ImageStore) -> list[str]:
    """What the store's staging directory still holds (it may never have been made)."""
    try:
        return os.listdir(os.path.join(store.root, "tmp"))
    except FileNotFoundError:
        return []


def test_import_list_get_and_manifest(store, rootfs_tar):
    image = import_image(str(rootfs_tar), "tiny", store)
    assert image.name == "tiny" and image.digest.startswith("sha256-")
    assert Path(image.root, "usr/bin/hello").read_bytes() == b"#!/bin/sh\necho hello\n"
    assert os.readlink(os.path.join(image.root, "bin")) == "usr/bin"
    m = image.manifest
    assert (m["source"], m["digest"], m["files"]) == ("import", image.digest, m["files"])
    assert m["files"] >= 3 and m["size"] >= 100 and m["packages"] == {}
    assert m["python"] is None and m["created"]
    assert [i.name for i in store.list()] == ["tiny"]
    assert store.get("tiny") == image
    assert os.readlink(os.path.join(store.root, "names", "tiny")) == "../" + image.digest
    assert leftovers(store) == []

    listed = cli(store, "list")
    assert listed.returncode == 0, listed.stderr
    assert "tiny" in listed.stdout and image.digest[7:19] in listed.stdout
    as_json = json.loads(cli(store, "list", "--json").stdout)
    assert [(i["name"], i["digest"], i["source"]) for i in as_json] == [
        ("tiny", image.digest, "import")]


def test_missing_image_names_the_command_that_makes_it(store):
    with pytest.raises(ImageNotFound, match="isol8 image build nope"):
        store.get("nope")
    with pytest.raises(ImageNotFound, match="not valid"):
        store.get("../etc")
    r = cli(store, "rm", "nope")
    assert r.returncode == 1 and "'nope' is not in" in r.stderr


def test_two_names_share_content_and_rm_keeps_it_until_the_last(store, rootfs_tar):
    a = import_image(str(rootfs_tar), "a", store)
    b = import_image(str(rootfs_tar), "b", store)
    assert a.digest == b.digest
    contents = [e for e in os.listdir(store.root) if e.startswith("sha256-")]
    assert contents == [a.digest]
    r = cli(store, "rm", "a")
    assert r.returncode == 0, r.stderr
    assert os.path.isdir(b.root) and store.find("a") is None
    # The last name goes, and its content with it, read-only directories included (the
    # importer may keep a tree's own modes; an unprivileged owner cannot unlink in them).
    os.chmod(os.path.join(b.root, "usr/lib/locked"), 0o555)
    os.chmod(os.path.join(b.root, "usr"), 0o555)
    assert cli(store, "rm", "b").returncode == 0
    assert not any(e.startswith("sha256-") for e in os.listdir(store.root))
    assert os.listdir(os.path.join(store.root, "names")) == []
    assert leftovers(store) == []


def test_reimport_swaps_the_name_and_drops_the_old_content(store, rootfs_tar, tmp_path):
    old = import_image(str(rootfs_tar), "img", store)
    other = make_tar(tmp_path / "other.tar", {"etc/os-release": b"ID=other\n"})
    new = import_image(str(other), "img", store)
    assert new.digest != old.digest
    assert store.get("img").digest == new.digest
    assert not os.path.exists(os.path.join(store.root, old.digest))
    assert Path(new.root, "etc/os-release").read_bytes() == b"ID=other\n"


def test_export_import_round_trip(store, rootfs_tar, tmp_path):
    image = import_image(str(rootfs_tar), "src", store)
    out = tmp_path / "export.tar"
    r = cli(store, "export", "src", "-o", str(out))
    assert r.returncode == 0, r.stderr
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar}
    assert all(m.uname == "" and m.gname == "" for m in members.values())
    back = import_image(str(out), "back", store)
    assert tree(back.root) == tree(image.root)
    # To standard output too, byte for byte the same stream.
    with open(tmp_path / "stdout.tar", "wb") as fh:
        assert cli(store, "export", "src", stdout=fh).returncode == 0
    with open(tmp_path / "direct.tar", "wb") as fh:
        export(store.get("src"), fh)
    assert (tmp_path / "stdout.tar").read_bytes() == (tmp_path / "direct.tar").read_bytes()


def test_a_hostile_member_is_refused_by_name_and_the_rest_imports(store, tmp_path):
    # Past the members the format sniffing reads, so the importer itself meets it.
    bad = make_tar(tmp_path / "bad.tar", {**{f"ok{i}": b"1" for i in range(40)},
                                          "../../escape": b"2"})
    r = cli(store, "import", str(bad), "--name", "bad")
    assert r.returncode == 0, r.stderr
    assert "isol8: import: refused member '../../escape' leaves the image root" in r.stderr
    image = store.get("bad")
    assert image.manifest["refused"] == [
        "member '../../escape' leaves the image root ('../../escape')"]
    assert sorted(os.listdir(image.root)) == sorted(f"ok{i}" for i in range(40))
    assert not (tmp_path / "escape").exists()
    assert leftovers(store) == []


def test_a_refused_archive_leaves_nothing(store, tmp_path):
    good = make_tar(tmp_path / "good.tar", {f"ok{i}": b"1" * 4096 for i in range(40)})
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:30 * 5120])  # truncated in its 30th member
    r = cli(store, "import", str(cut), "--name", "bad")
    assert r.returncode == 1
    assert "truncated" in r.stderr, r.stderr
    assert store.find("bad") is None
    assert leftovers(store) == []
    assert not any(e.startswith("sha256-") for e in os.listdir(store.root))


def test_staging_left_by_a_killed_import_is_removed(store, rootfs_tar):
    stale = Path(store.root, "tmp", "img.99999.dead", "image", "rootfs", "ro")
    stale.mkdir(parents=True)
    (stale / "f").write_text("x")
    stale.chmod(0o500)
    import_image(str(rootfs_tar), "img", store)
    assert leftovers(store) == []


def test_concurrent_imports_of_one_name_end_consistent(store, tmp_path):
    tars = [make_tar(tmp_path / f"t{i}.tar", {"etc/which": f"{i}\n".encode(),
                                             **{f"usr/share/f{n}": b"y" * 2000
                                                for n in range(300)}})
            for i in range(2)]
    env = {**os.environ, "ISOL8_IMAGES": store.root}
    procs = [subprocess.Popen([sys.executable, "-m", "isol8", "image", "import", str(t),
                               "--name", "same"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for t in tars]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [rc for rc, _ in results] == [0, 0], results
    image = store.get("same")
    assert Path(image.root, "etc/which").read_text() in ("0\n", "1\n")
    assert len(os.listdir(os.path.join(image.root, "usr/share"))) == 300
    assert image.manifest["digest"] == image.digest
    # The loser's content went when the winner's name replaced it.
    assert [e for e in os.listdir(store.root) if e.startswith("sha256-")] == [image.digest]
    assert leftovers(store) == []


# -- recipes -----------------------------------------------------------------------------------

@pytest.fixture
def recipe_dir(monkeypatch):
    monkeypatch.setenv("ISOL8_RECIPES", str(ROOTFS))


@pytest.mark.parametrize("name,needs", [("python", {"python3", "python3-pip"}),
                                        ("node", {"nodejs", "npm"}), ("bash", {"bash"}),
                                        ("bun", {"npm"}), ("deno", {"npm"})])
def test_the_shipped_recipes_load(recipe_dir, name, needs):
    recipe = recipes.load(name)
    assert needs <= set(recipe.packages) and recipe.suite == "bookworm"
    assert "ca-certificates" in recipe.packages


def test_recipe_digest_covers_content_not_formatting(tmp_path):
    a = tmp_path / "a.toml"
    a.write_text('suite = "bookworm"\npackages = ["dash", "python3"]\n')
    b = tmp_path / "b.toml"
    b.write_text('# a comment\npackages = [ "python3","dash" ]\nsuite="bookworm"\n')
    ra, rb = recipes.load(str(a)), recipes.load(str(b))
    assert ra.digest() == rb.digest()
    assert ra.digest(["numpy"]) != ra.digest()
    assert ra.digest(["a", "b"]) == ra.digest(["b", "a"])
    b.write_text('packages = ["python3", "dash"]\nsetup = "true"\n')
    assert recipes.load(str(b)).digest() != ra.digest()


@pytest.mark.parametrize("text,message", [
    ('packges = ["x"]', "unknown key(s) packges"),
    ('packages = ["-oops"]', "'-oops' is not a Debian package name"),
    ('packages = ["a,b"]', "'a,b' is not a Debian package name"),
    ('suite = "sid; rm"', "suite 'sid; rm'"),
    ('variant = "everything"', "variant 'everything'"),
    ('[files]\n"/etc/../x" = "y"', "'/etc/../x' must be absolute"),
    ('[files]\n"etc/x" = "y"', "'etc/x' must be absolute"),
    ('installer = "cargo"', "installer 'cargo'"),
    ('packages = "python3"', "packages must be a list"),
    ('packages = [', "recipe"),
    ('variant = "extract"\nsetup = "true"', "only unpacks packages"),
])
def test_bad_recipes_are_refused_naming_the_fault(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(InvalidRequest) as exc:
        recipes.load(str(path))
    assert message in str(exc.value)


def test_unknown_recipe_lists_the_known_ones(recipe_dir):
    with pytest.raises(InvalidRequest, match="no recipe 'nosuch'.*python"):
        recipes.load("nosuch")


@pytest.mark.parametrize("pkg", ["-e", "--index-url=http://evil", "http://x/y.whl",
                                 "git+https://h/r", "../local", "/abs/path", "a b", "",
                                 "pkg; rm -rf /", "file:x"])
def test_install_names_refuse_options_urls_and_paths(recipe_dir, pkg):
    with pytest.raises(InvalidRequest, match="not a package name"):
        recipes.check_install(recipes.load("python"), [pkg])


@pytest.mark.parametrize("pkg", ["numpy", "numpy==1.26.4", "requests[socks]>=2",
                                 "@scope/tool@1.2.3", "left-pad@^1.3.0", "zope.interface"])
def test_install_names_accept_registry_packages(recipe_dir, pkg):
    recipes.check_install(recipes.load("python"), [pkg])


def test_install_needs_an_installer(recipe_dir):
    with pytest.raises(InvalidRequest, match="'bash' has no installer"):
        recipes.check_install(recipes.load("bash"), ["numpy"])


def test_build_command_excludes_docs_and_quotes_the_recipe(recipe_dir, tmp_path):
    recipe = recipes.parse("r", {"packages": ["python3"], "installer": "pip",
                                 "setup": "echo 'it''s' > /etc/x",
                                 "files": {"/etc/a b": "x"}})
    cmd = image_build.mmdebstrap_command(recipe, ["numpy==1.0"], mode="unshare",
                                         tarball=str(tmp_path / "o.tar"),
                                         staging=str(tmp_path), cache="/c",
                                         index_url="http://127.0.0.1:1/simple")
    assert cmd[:3] == ["mmdebstrap", "--mode=unshare", "--variant=essential"]
    assert cmd[-2:] == ["bookworm", str(tmp_path / "o.tar")]
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in cmd
    assert "--include=python3" in cmd
    setup = next(c for c in cmd if "/bin/sh -ec" in c)
    assert setup.startswith('--customize-hook=chroot "$1" env -i PATH=')
    assert setup.endswith("/bin/sh -ec 'echo '\"'\"'it'\"'\"''\"'\"'s'\"'\"' > /etc/x'")
    assert "--customize-hook=upload " + str(tmp_path / "file0") + " '/etc/a b'" in cmd
    pip = next(c for c in cmd if "pip install" in c)
    assert pip.endswith("--index-url http://127.0.0.1:1/simple -- numpy==1.0")


def test_build_without_mmdebstrap_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(Isol8Error, match="apt-get install mmdebstrap"):
        image_build.choose_mode()


@pytest.mark.rootless_only
def test_rootless_build_without_subids_or_fakechroot_says_what_to_do(monkeypatch, tmp_path):
    # A PATH with mmdebstrap but neither newuidmap nor fakechroot.
    (tmp_path / "mmdebstrap").symlink_to("/usr/bin/mmdebstrap")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(Isol8Error, match="usermod --add-subuids.*fakechroot"):
        image_build.choose_mode()


@pytest.mark.rootless_only
def test_root_mode_is_refused_rootless():
    with pytest.raises(InvalidRequest, match="--mode root needs root"):
        image_build.choose_mode("root")


def test_the_recipe_example_in_rootfs_readme_is_a_valid_recipe():
    import re
    import tomllib

    text = (ROOTFS / "README.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    recipe = recipes.parse("example", tomllib.loads(example))
    assert recipe.installer == "pip" and "/etc/pip.conf" in recipe.files


def test_progress_is_plain_lines_off_a_terminal_and_one_line_on_one():
    plain = io.StringIO()
    progress = image_build.Progress("py", plain)
    for step in ("resolving", "resolving", "downloading"):
        progress(step)
    progress.done("built")
    lines = plain.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == [
        "isol8: image py: resolving", "isol8: image py: downloading", "isol8: image py: built"]
    assert "\r" not in plain.getvalue()

    controller, terminal = os.openpty()
    chunks = []
    try:
        with os.fdopen(terminal, "w") as tty:  # closed when written: the reads below end
            progress = image_build.Progress("py", tty)
            progress("resolving")
            progress("downloading")
            progress.done("built")
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal side is closed and everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
    out = b"".join(chunks).decode()
    # Each step rewrites the same line; only the last ends it.
    assert out.count("\r\x1b[K") == 3 and out.rstrip("\r\n").count("\n") == 0
    assert out.endswith("\n") and "built" in out


def test_keep_debs_adds_only_new_debs_whole(tmp_path):
    synced, cache = tmp_path / "synced", tmp_path / "cache"
    synced.mkdir()
    cache.mkdir()
    (synced / "a_1_amd64.deb").write_bytes(b"A" * 5000)
    (synced / "b_1_amd64.deb").write_bytes(b"B")
    (synced / "lock").write_text("")
    (cache / "b_1_amd64.deb").write_bytes(b"kept")
    assert image_build.keep_debs(str(synced), str(cache)) == 1
    assert sorted(os.listdir(cache)) == ["a_1_amd64.deb", "b_1_amd64.deb"]
    assert (cache / "a_1_amd64.deb").read_bytes() == b"A" * 5000
    assert (cache / "b_1_amd64.deb").read_bytes() == b"kept"
    assert image_build.keep_debs(str(tmp_path / "none"), str(cache)) == 0
