"""`visionzoo fid`: where --save-stats writes, statistics files it refuses, and when it builds no network."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_coco_eval_command import one_line_error

from visionzoo.cli import main
from visionzoo.metrics import domain, inception
from visionzoo.metrics.domain import DomainFeatures


def write_folder(folder, seed, count=6, size=16):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8), mode="L").save(folder / f"{index}.png")
    return folder


def write_stats(path, mu, sigma):
    np.savez(path, mu=np.asarray(mu, dtype=np.float64), sigma=np.asarray(sigma, dtype=np.float64))
    return path


@pytest.fixture
def domain_args(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "digits-domain.safetensors"
    save_file(DomainFeatures(1, 10).state_dict(), weights)
    return ["--features", "domain", "--data", "digits", "--img-size", "16", "--checkpoint", str(weights)]


@pytest.fixture
def no_network(monkeypatch):
    """Building either feature network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a feature network was built")

    monkeypatch.setattr(domain, "domain_features", refuse)
    monkeypatch.setattr(inception, "InceptionFeatures", refuse)


def test_save_stats_replaces_an_existing_file_only_with_overwrite(tmp_path, domain_args, capsys):
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    existing = write_stats(tmp_path / "a.npz", np.zeros(128), np.eye(128))
    before = existing.read_bytes()
    argv = ["fid", str(folder_a), str(folder_b), *domain_args, "--save-stats", str(existing)]
    one_line_error(capsys, argv, f"{existing} exists; pass --overwrite")
    assert existing.read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0
    assert f"statistics of {folder_a}: {existing}" in capsys.readouterr().out
    with np.load(existing) as saved:
        assert saved["mu"].shape == (128,) and not np.array_equal(saved["sigma"], np.eye(128))
    assert not (tmp_path / "a.npz.npz").exists()


@pytest.mark.parametrize("typed", ["b.npz", "./sub/../b.npz"])
def test_save_stats_onto_path_b_is_refused(tmp_path, domain_args, capsys, typed):
    folder_a = write_folder(tmp_path / "a", 0)
    (tmp_path / "sub").mkdir()
    stats_b = write_stats(tmp_path / "b.npz", np.zeros(128), np.eye(128))
    before = stats_b.read_bytes()
    one_line_error(capsys, ["fid", str(folder_a), str(stats_b), *domain_args, "--save-stats", str(tmp_path / typed),
                            "--overwrite"], "is PATH_B; choose another file")
    assert stats_b.read_bytes() == before


def test_save_stats_into_a_missing_folder_fails_before_any_feature(tmp_path, capsys, no_network):
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    one_line_error(capsys, ["fid", str(folder_a), str(folder_b), "--save-stats", str(tmp_path / "nowhere" / "a.npz")],
                   "--save-stats", "nowhere does not exist")


def test_save_stats_below_a_file_is_refused_naming_the_file(tmp_path, capsys, no_network):
    # before: "folder .../notes.txt does not exist", of a file that does
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    one_line_error(capsys, ["fid", str(folder_a), str(folder_b), "--save-stats", str(notes / "a.npz")],
                   "--save-stats", f"{notes} is a file, not a folder")
    assert notes.read_text() == "mine"


@pytest.mark.parametrize("make_b", [lambda b: b, lambda b: b.mkdir() or b])
def test_a_missing_or_empty_path_b_fails_before_any_feature(tmp_path, capsys, no_network, make_b):
    # before: PATH_A's features were computed (minutes for a large folder) and then PATH_B was found wanting
    folder_a, path_b = write_folder(tmp_path / "a", 0), make_b(tmp_path / "b")
    one_line_error(capsys, ["fid", str(folder_a), str(path_b)], str(path_b))


@pytest.mark.parametrize("dim, features, message", [
    (128, [], "128 dimensions; --features inception gives 2048 (statistics of --features domain?)"),
    (2048, ["--features", "domain", "--data", "digits"],
     "2048 dimensions; --features domain gives 128 (statistics of --features inception?)"),
])
def test_statistics_of_the_other_network_fail_before_it_is_built(tmp_path, capsys, no_network, dim, features, message):
    # before: the folder's features were computed (Inception first downloaded) and only then the dimensions compared
    folder = write_folder(tmp_path / "a", 0)
    stats = write_stats(tmp_path / "stats.npz", np.zeros(dim), np.eye(dim))
    one_line_error(capsys, ["fid", str(folder), str(stats), *features], str(stats), message)


@pytest.mark.parametrize("typed", ["stats/", "new/"])
def test_save_stats_naming_a_folder_is_refused(tmp_path, capsys, no_network, typed):
    # before: --save-stats stats/ wrote stats.npz beside the folder, not in it (np.savez would write stats/.npz)
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    (tmp_path / "stats").mkdir()
    one_line_error(capsys, ["fid", str(folder_a), str(folder_b), "--save-stats", f"{tmp_path}/{typed}"],
                   "names a folder; name the file")
    assert not (tmp_path / "stats.npz").exists() and not (tmp_path / "new.npz").exists()


def test_save_stats_onto_an_existing_folder_is_refused_before_any_feature(tmp_path, capsys, no_network):
    # before: --overwrite computed PATH_A's features, then failed with "[Errno 21] Is a directory", naming no option
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    (tmp_path / "stats.npz").mkdir()
    one_line_error(capsys, ["fid", str(folder_a), str(folder_b), "--save-stats", str(tmp_path / "stats.npz"),
                            "--overwrite"], f"--save-stats {tmp_path / 'stats.npz'} is a folder; name a file")
    assert (tmp_path / "stats.npz").is_dir()


def test_statistics_of_another_inception_block_get_no_hint_at_the_domain_features(tmp_path, capsys, no_network):
    folder = write_folder(tmp_path / "a", 0)
    stats = write_stats(tmp_path / "stats.npz", np.zeros(768), np.eye(768))  # pytorch-fid --dims 768
    assert main(["fid", str(folder), str(stats)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{stats} has statistics of 768 dimensions; --features inception "
                                                    "gives 2048")


def test_two_statistics_files_build_no_network(tmp_path, capsys, no_network):
    small = write_stats(tmp_path / "small.npz", np.zeros(4), np.eye(4))
    shifted = write_stats(tmp_path / "shifted.npz", np.ones(4), np.eye(4))
    assert main(["fid", str(small), str(shifted)]) == 0
    assert capsys.readouterr().out.strip() == "FID: 4.000000"  # |mu1 - mu2|^2, equal covariances
    assert main(["fid", str(small), str(shifted), "--features", "domain", "--data", "digits"]) == 0


def test_feature_options_beside_two_statistics_files_are_named_as_unused(tmp_path, capsys, no_network):
    """`fid a.npz b.npz --resize clean` printed the FID without a word, as if the statistics had been read with
    clean-fid's resize; options that only choose how image folders are read now get a note that they were not used."""
    small = write_stats(tmp_path / "small.npz", np.zeros(4), np.eye(4))
    shifted = write_stats(tmp_path / "shifted.npz", np.ones(4), np.eye(4))
    capsys.readouterr()
    assert main(["fid", str(small), str(shifted), "--resize", "clean", "--batch-size", "8"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "FID: 4.000000"
    assert "--resize, --batch-size" in captured.err and "not used" in captured.err
    assert main(["fid", str(small), str(shifted), "--precision", "bf16", "--device", "cpu"]) == 0
    assert "--precision, --device" in capsys.readouterr().err
    assert main(["fid", str(small), str(shifted)]) == 0
    assert capsys.readouterr().err == ""


def test_fid_on_the_cpu_by_device_in_fp32_is_todays(tmp_path, domain_args, capsys, monkeypatch):
    """fid took neither --device nor --precision (refused as unrecognized arguments) and read every folder on the
    CPU. --device cpu --precision fp32 gives the FID that fid gave without them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the default is then the CPU, as before
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    argv = ["fid", str(folder_a), str(folder_b), *domain_args]
    assert main(argv) == 0
    before = capsys.readouterr().out
    assert before.startswith("FID: ")
    assert main([*argv, "--device", "cpu", "--precision", "fp32"]) == 0
    assert capsys.readouterr().out == before


def test_fid_device_cuda_without_a_gpu_is_one_line_before_any_network(tmp_path, capsys, no_network, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    one_line_error(capsys, ["fid", str(folder_a), str(folder_b), "--device", "cuda"],
                   "--device cuda was asked for, but no CUDA device is available")


def test_fid_in_bf16_reads_features_close_to_fp32_ones(tmp_path, domain_args, capsys, monkeypatch):
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    forward, seen = DomainFeatures.forward, []

    def recording(self, images):
        features = forward(self, images)
        seen.append(features.float())
        return features

    monkeypatch.setattr(DomainFeatures, "forward", recording)
    argv = ["fid", str(folder_a), str(folder_b), *domain_args, "--device", "cpu"]
    values = {}
    for precision in ("fp32", "bf16"):
        seen.clear()
        assert main([*argv, "--precision", precision]) == 0
        values[precision] = (float(capsys.readouterr().out.removeprefix("FID: ")), torch.cat(seen))
    (fp32, fp32_features), (bf16, bf16_features) = values["fp32"], values["bf16"]
    assert not torch.equal(bf16_features, fp32_features)  # bf16 autocast ran
    assert torch.nn.functional.cosine_similarity(bf16_features, fp32_features).min() > 0.99
    assert bf16 == pytest.approx(fp32, rel=0.1)


def test_fid_precision_defaults_to_fp32_and_its_help_says_why():
    """FID moves with the features' precision: fid computes in fp32 (as pytorch-fid) unless told bf16."""
    from visionzoo.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    action = next(a for a in subparsers.choices["fid"]._actions if a.dest == "precision")
    assert action.default == "fp32" and action.choices == ("auto", "bf16", "fp32")
    assert "fp32 (default" in action.help and "pytorch-fid" in action.help


def test_an_uppercase_npz_is_read_as_statistics(tmp_path, capsys, no_network):
    # before: "STATS.NPZ is neither an image folder nor an .npz statistics file"
    small = write_stats(tmp_path / "small.npz", np.zeros(4), np.eye(4))
    upper = tmp_path / "SHIFTED.NPZ"
    write_stats(tmp_path / "shifted.npz", np.ones(4), np.eye(4)).rename(upper)
    assert main(["fid", str(small), str(upper)]) == 0
    assert capsys.readouterr().out.strip() == "FID: 4.000000"


def test_save_stats_to_an_uppercase_npz_writes_that_file_which_fid_then_reads(tmp_path, domain_args, capsys):
    """--save-stats STATS.NPZ wrote STATS.NPZ.npz (np.savez appends .npz to a name not ending in lowercase .npz),
    while fid reads STATS.NPZ as statistics: `fid STATS.NPZ b` then said "statistics file STATS.NPZ does not exist"."""
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    upper = tmp_path / "STATS.NPZ"
    assert main(["fid", str(folder_a), str(folder_b), *domain_args, "--save-stats", str(upper)]) == 0
    out = capsys.readouterr().out
    assert f"statistics of {folder_a}: {upper}\n" in out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["STATS.NPZ", "a", "b", "digits-domain.safetensors"]
    assert main(["fid", str(upper), str(folder_b), *domain_args]) == 0
    assert capsys.readouterr().out.strip() == out.splitlines()[-1]
    one_line_error(capsys, ["fid", str(folder_a), str(upper), *domain_args, "--save-stats", str(upper), "--overwrite"],
                   "is PATH_B; choose another file")


def test_a_bad_statistics_file_fails_before_any_feature(tmp_path, capsys, no_network):
    folder = write_folder(tmp_path / "a", 0)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    one_line_error(capsys, ["fid", str(folder), str(bad)], str(bad), "not an FID statistics file")


def write_junk_member(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mu", b"junk")
        archive.writestr("sigma", b"junk")


def write_plain_npy(path):
    with open(path, "wb") as handle:
        np.save(handle, np.eye(3))


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b"not a zip"), "not an FID statistics file"),
    (write_plain_npy, "it holds a single array (.npy)"),
    (write_junk_member, "its mu is not a NumPy array"),
    (lambda p: np.savez(p, mu=np.zeros(3, bool), sigma=np.eye(3, dtype=bool)), "its mu holds bool"),
    (lambda p: np.savez(p, other=np.zeros(3)), "not an FID statistics file"),
    (lambda p: write_stats(p, np.zeros(3), np.eye(2)), "do not fit together"),
    (lambda p: write_stats(p, np.zeros(3), np.ones((3, 2))), "do not fit together"),
    (lambda p: write_stats(p, [0, 0, np.nan], np.eye(3)), "non-finite"),
    (lambda p: write_stats(p, np.zeros(3), [[1, 5, 0], [0, 1, 0], [0, 0, 1]]), "sigma is not symmetric"),
    (lambda p: write_stats(p, np.zeros(3), -np.eye(3)), "negative variances"),
    # before: "sigma2 is not positive semi-definite", naming neither file
    (lambda p: write_stats(p, np.zeros(3), [[1, 2, 0], [2, 1, 0], [0, 0, 1]]), "sigma is not positive semi-definite"),
])
def test_invalid_statistics_are_one_line_naming_the_file(tmp_path, capsys, no_network, write, message):
    good = write_stats(tmp_path / "good.npz", np.zeros(3), np.eye(3))
    bad = tmp_path / "bad.npz"
    write(bad)
    one_line_error(capsys, ["fid", str(good), str(bad)], str(bad), message)


def test_an_indefinite_sigma_is_refused_beside_a_zero_one(tmp_path, capsys, no_network):
    # before: "FID: 2.000000", as pytorch-fid gives: a zero sigma1 hides everything about sigma2 but its trace
    zero = write_stats(tmp_path / "zero.npz", np.zeros(2), np.zeros((2, 2)))
    indefinite = write_stats(tmp_path / "indefinite.npz", np.zeros(2), [[1, 2], [2, 1]])
    one_line_error(capsys, ["fid", str(zero), str(indefinite)], str(indefinite), "not positive semi-definite")


def test_statistics_of_different_dimensions_say_which_file_has_which(tmp_path, capsys, no_network):
    four = write_stats(tmp_path / "four.npz", np.zeros(4), np.eye(4))
    eight = write_stats(tmp_path / "eight.npz", np.zeros(8), np.eye(8))
    one_line_error(capsys, ["fid", str(four), str(eight)], f"{four} has statistics of 4 dimensions and {eight} of 8")


def test_saved_statistics_record_their_features_and_stay_readable_by_pytorch_fid(tmp_path, domain_args, capsys):
    """A saved .npz did not say which network, image size or resize made it, so it could be compared with features
    of another without a word."""
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    saved = tmp_path / "a.npz"
    assert main(["fid", str(folder_a), str(folder_b), *domain_args, "--save-stats", str(saved)]) == 0
    first = capsys.readouterr().out
    with np.load(saved) as data:  # as pytorch-fid reads it: mu and sigma, whatever else the archive holds
        assert data["mu"].shape == (128,) and data["sigma"].shape == (128, 128)
        assert str(data["visionzoo_features"]).startswith("DomainFeatures image_size=16 in_chans=1 weights=")
        assert int(data["visionzoo_num_images"]) == 6
    assert main(["fid", str(saved), str(folder_b), *domain_args]) == 0  # the same features: the same distance
    assert capsys.readouterr().out.splitlines()[-1] == first.splitlines()[-1]
    assert main(["fid", str(folder_a), str(folder_b), *domain_args, "--precision", "bf16", "--save-stats", str(saved),
                 "--overwrite"]) == 0
    with np.load(saved) as data:
        assert str(data["visionzoo_features"]).endswith(" precision=bf16")
    assert main(["fid", str(saved), str(folder_b), *domain_args, "--precision", "bf16"]) == 0


@pytest.mark.parametrize("change", ["image size", "weights", "precision"])
def test_statistics_of_other_features_are_refused(tmp_path, domain_args, capsys, change):
    """Statistics saved by --precision bf16 (FID moves with the features' precision) are features of their own."""
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    saved = tmp_path / "a.npz"
    assert main(["fid", str(folder_a), str(folder_b), *domain_args, "--save-stats", str(saved)]) == 0
    other = list(domain_args)
    if change == "image size":
        other[other.index("--img-size") + 1] = "24"
    elif change == "precision":
        other += ["--precision", "bf16"]
    else:
        torch.manual_seed(1)
        save_file(DomainFeatures(1, 10).state_dict(), tmp_path / "other.safetensors")
        other[other.index("--checkpoint") + 1] = str(tmp_path / "other.safetensors")
    one_line_error(capsys, ["fid", str(saved), str(folder_b), *other], f"{folder_b} (read with these options) has "
                   "features of 'DomainFeatures", f"and {saved} of 'DomainFeatures", "compute both the same way")


def test_two_statistics_files_of_other_features_are_refused_and_pytorch_fids_are_taken(tmp_path, capsys, no_network):
    mu, sigma = np.zeros(128), np.eye(128)
    np.savez(tmp_path / "a.npz", mu=mu, sigma=sigma, visionzoo_features="DomainFeatures image_size=32 weights=aa")
    np.savez(tmp_path / "b.npz", mu=mu, sigma=sigma, visionzoo_features="DomainFeatures image_size=16 weights=aa")
    one_line_error(capsys, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")], "image_size=16", "image_size=32")
    write_stats(tmp_path / "pytorch_fid.npz", mu, sigma)  # no record of its features: taken as it is
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "pytorch_fid.npz")]) == 0
    assert capsys.readouterr().out.strip() == "FID: 0.000000"


def test_an_inception_download_that_fails_says_what_works_offline(tmp_path, capsys, monkeypatch):
    """Offline, `visionzoo fid A B` ended in "could not download ...: Name or service not known" without saying that
    a local weights file (--checkpoint) or the domain features need no download."""
    from visionzoo.models import _hub

    def offline(*args, **kwargs):
        raise _hub.DownloadError("could not download https://example.invalid/pt_inception.pth: no network")

    monkeypatch.setattr(_hub, "download_pretrained", offline)
    monkeypatch.setattr(_hub, "download", offline)
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    one_line_error(capsys, ["fid", str(folder_a), str(folder_b)], "could not download", "--checkpoint",
                   "--features domain")


def test_subfolders_of_a_folder_are_named_as_not_read(tmp_path, domain_args, capsys):
    """Images in subfolders (class folders, as clean-fid reads them) were left out without a word whenever the folder
    itself held 2 images or more: the FID of those few alone."""
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    write_folder(folder_a / "cats", 2)
    write_folder(folder_a / "dogs", 3)
    assert main(["fid", str(folder_a), str(folder_b), *domain_args]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("FID: ")
    assert captured.err.strip().splitlines() == [
        f"note: {folder_a} has subfolders (cats, dogs), which are not read (as in pytorch-fid); its statistics are "
        "of the 6 images in the folder itself"]
    assert main(["fid", str(folder_b), str(folder_b), *domain_args]) == 0
    assert capsys.readouterr().err == ""


def test_upper_case_extensions_are_read_and_named(tmp_path, domain_args, capsys):
    """Files named a.PNG were read without a word, where pytorch-fid's case-sensitive glob skips them on Linux:
    the same folders gave two FIDs, and nothing said why."""
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    (folder_a / "0.png").rename(folder_a / "0.PNG")
    (folder_a / "1.png").rename(folder_a / "1.Png")
    assert main(["fid", str(folder_a), str(folder_b), *domain_args]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("FID: ")
    assert captured.err.strip().splitlines() == [
        f"note: {folder_a} has 2 of its 6 images under upper-case extensions (0.PNG, 1.Png); they are read, where "
        "pytorch-fid's case-sensitive listing skips them on Linux, so its FID of this folder would differ"]


@pytest.mark.parametrize("name, named", [("stats", "stats.npz"), ("stats.txt", "stats.txt.npz"),
                                         ("real.npz.bak", "real.npz.bak.npz")])
def test_save_stats_without_npz_is_refused_before_any_feature(tmp_path, capsys, no_network, name, named):
    """--save-stats stats.txt wrote stats.txt.npz (np.savez appends the suffix), a file the user did not name; written
    as named, neither `visionzoo fid` nor pytorch-fid would read it back, both taking statistics from .npz files only."""
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    one_line_error(capsys, ["fid", str(folder_a), str(folder_b), "--save-stats", str(tmp_path / name)],
                   f"--save-stats {tmp_path / name} is not an .npz file, the only statistics that fid (and pytorch-fid) "
                   f"read back; name it {tmp_path / named}")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("name", ["grid.png", "stats.JPG"])
def test_save_stats_naming_an_image_is_refused_before_any_feature(tmp_path, capsys, no_network, name):
    """--save-stats grid.png wrote grid.png.npz (np.savez appends the suffix) after computing every feature."""
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    one_line_error(capsys, ["fid", str(folder_a), str(folder_b), "--save-stats", str(tmp_path / name)],
                   f"--save-stats {tmp_path / name} names an image; the statistics are an .npz file, e.g. "
                   f"{(tmp_path / name).with_suffix('.npz')}")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b"]
