"""``mmpost setup libero``'s data step: a local copy is found in ``shared/`` beside a folder above the
working directory, unpacked once into the private folder, and anything that is not LIBERO's data is refused by name."""

import tarfile

import pytest

from mmpost.envs import libero_install


def _tarball(path, folders):
    source = path.parent / "src"
    for name in folders:
        (source / name).mkdir(parents=True)
        (source / name / "x.txt").write_text(name)
    with tarfile.open(path, "w:gz") as archive:
        for name in folders:
            archive.add(source / name, arcname=name)
    return path


def test_data_is_found_above_the_checkout_and_unpacked_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPOST_LIBERO", str(tmp_path / "private"))
    monkeypatch.delenv("LIBERO_ROOT", raising=False)
    shared = tmp_path / "machine" / "shared" / "libero"
    shared.mkdir(parents=True)
    tarball = _tarball(shared / "libero-data.tar.gz", libero_install.DATA_FOLDERS)
    elsewhere, checkout = tmp_path / "other" / "checkout", tmp_path / "machine" / "ci" / "checkout"
    for folder in (elsewhere, checkout):
        folder.mkdir(parents=True)
    assert libero_install.find_data(elsewhere) is None
    assert libero_install.find_data(checkout) == tarball
    assert libero_install.data_root() is None
    root = libero_install.install_data(tarball)
    assert root == tmp_path / "private" / "data" and libero_install.data_root() == root
    assert (root / "init_files" / "x.txt").read_text() == "init_files"
    tarball.unlink()
    assert libero_install.install_data(tarball) == root  # already there: the copy is not read again


def test_a_copy_without_libero_folders_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPOST_LIBERO", str(tmp_path / "private"))
    tarball = _tarball(tmp_path / "other.tar.gz", ["assets"])
    with pytest.raises(RuntimeError, match="not LIBERO's data: no bddl_files, init_files"):
        libero_install.install_data(tarball)
    assert libero_install.data_root() is None and not (tmp_path / "private" / "data").exists()
