"""Checkpoint files: safe reading of any weights file, atomic writing of ours."""

import collections
import json
import os
import re
import stat
import warnings

import pytest
import torch
from safetensors.torch import save_file

from visionzoo.checkpoint import (
    CheckpointError,
    atomic_write,
    load_torch_file,
    model_state,
    process_umask,
    read_checkpoint,
    read_metadata,
    save_checkpoint,
)

UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)
    return {}


class Payload:
    """An object whose unpickling runs code: what weights-only loading must never do."""

    def __reduce__(self):
        return (_record_unpickling, ())


class TaggedDict(collections.OrderedDict):
    pass


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=generator), "fc.bias": torch.randn(5, generator=generator)}


@pytest.mark.parametrize("kind", ["instance", "dict_subclass"])
def test_unsafe_pickles_are_refused(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "instance":
        torch.save({**state(), "extra": Payload()}, path)
        type_name = "_record_unpickling"
    else:
        torch.save(TaggedDict(state()), path)
        type_name = "TaggedDict"
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "refused for safety" in message and type_name in message
    assert "\n" not in message
    assert UNPICKLED == []


def test_torchvision_and_timm_containers_are_unwrapped(tmp_path):
    tensors = state()
    torch.save(collections.OrderedDict(tensors), tmp_path / "plain.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in tensors.items()}, "epoch": 3, "arch": "x"},
               tmp_path / "timm_train.pth")
    torch.save({"model": tensors, "epoch": 9}, tmp_path / "torchvision_reference.pth")
    for name in ("plain.pth", "timm_train.pth", "torchvision_reference.pth"):
        loaded, meta = read_checkpoint(tmp_path / name)
        assert meta is None
        assert loaded.keys() == tensors.keys()
        assert all(torch.equal(loaded[k], v) for k, v in tensors.items()), name



@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_ddp_and_compile_prefixes_are_taken_off_foreign_files_of_either_kind(tmp_path, prefix, suffix):
    # a .safetensors of a DDP or torch.compile'd model kept its prefixes and did not fit; timm's clean_state_dict drops them
    tensors = state()
    wrapped = {prefix + k: v for k, v in tensors.items()}
    path = tmp_path / f"wrapped{suffix}"
    save_file(wrapped, path) if suffix == ".safetensors" else torch.save(wrapped, path)
    loaded, meta = read_checkpoint(path)
    assert meta is None and loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_timm_and_torchvision_training_files_with_their_argparse_arguments_load(tmp_path):
    """timm's train.py (CheckpointSaver) and torchvision's reference scripts save their argparse.Namespace beside the
    weights ("args"): both files were refused for safety, though timm's own loader reads them weights-only with
    that one class allowed. The Namespace is allowed as plain data; anything else beside it is still refused."""
    import argparse

    from timm.utils import CheckpointSaver

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = torch.nn.Linear(3, 2)
    args = argparse.Namespace(model="resnet18", lr=0.1, input_size=None, mean=[0.5, 0.5, 0.5])
    saver = CheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), args=args, model_ema=ema,
                            checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    saver.save_checkpoint(0, metric=0.5)
    loaded, meta = read_checkpoint(tmp_path / "last.pth.tar")
    assert meta is None and all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    loaded, _ = read_checkpoint(tmp_path / "last.pth.tar", use_ema=True)
    assert all(torch.equal(loaded[k], v) for k, v in ema.state_dict().items())

    reference = tmp_path / "torchvision_reference.pth"
    torch.save({"model": state(), "optimizer": {}, "lr_scheduler": {}, "epoch": 3, "args": args}, reference)
    loaded, _ = read_checkpoint(reference)
    assert all(torch.equal(loaded[k], v) for k, v in state().items())

    torch.save({"model": state(), "args": argparse.Namespace(extra=Payload())}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="refused for safety.*_record_unpickling"):
        read_checkpoint(tmp_path / "unsafe.pth")
    assert UNPICKLED == []


def test_an_averaged_models_ema_loses_its_step_count(tmp_path):
    # torchvision's reference scripts save model_ema = AveragedModel.state_dict(); its n_averaged was an unexpected key
    tensors = state()
    ema = {"n_averaged": torch.tensor(7), **{f"module.{k}": v + 1 for k, v in tensors.items()}}
    torch.save({"model": tensors, "model_ema": ema, "epoch": 3}, tmp_path / "reference.pth")
    loaded, _ = read_checkpoint(tmp_path / "reference.pth", use_ema=True)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], v + 1) for k, v in tensors.items())
    loaded, _ = read_checkpoint(tmp_path / "reference.pth")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    torch.save({"n_averaged": torch.tensor(7), **tensors}, tmp_path / "plain.pth")  # a model's own key of that name
    assert "n_averaged" in read_checkpoint(tmp_path / "plain.pth")[0]

def test_non_state_dicts_are_refused(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    torch.save({"weight": torch.zeros(3), "note": "hello"}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="holds a Tensor, not a state dict"):
        read_checkpoint(tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match=r"non-tensor entries \['note'\]"):
        read_checkpoint(tmp_path / "mixed.pth")


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_pth_gives_checkpoint_error_at_any_length(tmp_path, legacy):
    whole = tmp_path / "whole.pth"
    torch.save(state(), whole, _use_new_zipfile_serialization=not legacy)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pth"
    for length in range(0, len(data), 3):  # every opcode of the pickle, cut in the middle or at its end
        cut.write_bytes(data[:length])
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(cut)
        message = str(info.value)
        assert message.startswith(f"checkpoint {cut} is truncated or corrupt"), (length, message)
        assert "\n" not in message
        assert "weights_only" not in message and "Weights only" not in message, (length, message)


def test_a_truncated_zip_gives_the_reason_without_torchs_paragraph(tmp_path):
    """A .pth cut short read '... is truncated or corrupt: PytorchStreamReader failed reading zip archive: failed
    finding central directory. This is an internal miniz error. If you are seeing this error, there is a high
    likelihood that your checkpoint file is corrupted. This can happen if ...': some 250 characters repeating what
    'truncated or corrupt' says."""
    whole = tmp_path / "whole.pth"
    torch.save(state(), whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(cut)
    assert str(info.value) == (f"checkpoint {cut} is truncated or corrupt: PytorchStreamReader failed reading zip "
                               "archive: failed finding central directory")


@pytest.mark.parametrize("legacy", [False, True])
def test_damaged_pth_never_advises_unsafe_loading(tmp_path, legacy):
    """torch wraps a damaged file's unpickling error in advice to re-load with weights_only=False
    (arbitrary code); the message keeps only the reason, in one line, and prints no warning."""
    whole = tmp_path / "whole.pth"
    torch.save(state(), whole, _use_new_zipfile_serialization=not legacy)
    data = whole.read_bytes()
    damaged = tmp_path / "damaged.pth"
    refused = 0
    for index in range(len(data)):
        flipped = bytearray(data)
        flipped[index] ^= 0xFF
        damaged.write_bytes(bytes(flipped))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                read_checkpoint(damaged)
            except CheckpointError as error:
                message = str(error)
                refused += 1
                assert message.startswith(f"checkpoint {damaged} is truncated or corrupt: "), (index, message)
                assert "\n" not in message and "weights_only" not in message and "Weights only" not in message
                assert re.search("[A-Za-z]{3}", message.split(" is truncated or corrupt: ", 1)[1]), (index, message)  # not a bare "253"
    assert refused > len(data) // 4


def test_random_bytes_are_corrupt_not_unsafe(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is (corrupt|truncated)") as info:
        read_checkpoint(path)
    assert "safety" not in str(info.value)


LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a5a3a4c1b2e0f9d8e7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f\nsize 22883344\n")


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
@pytest.mark.parametrize("kind, expected", [
    ("lfs", "is a Git LFS pointer, not the weights it stands for: fetch them with `git lfs pull` in its repository"),
    ("png", "is a PNG image, not a weights file"),
    ("jpeg", "is a JPEG image, not a weights file"),
    ("html", "is an HTML page, not a weights file"),
])
def test_files_that_are_no_weights_are_named_for_what_they_are(tmp_path, suffix, kind, expected):
    """A Git LFS pointer (a model repository cloned without git-lfs), a picture or a web page saved under a weights
    file's name read 'truncated or corrupt: Unsupported operand 118' (or 'header too large'): the user looked for
    damage in a file that was never weights."""
    from PIL import Image

    path = tmp_path / f"model{suffix}"
    if kind == "lfs":
        path.write_bytes(LFS_POINTER)
    elif kind == "html":
        path.write_text("\n<!DOCTYPE html>\n<html><head><title>model.safetensors</title></head></html>\n")
    else:
        Image.new("RGB", (8, 8), (200, 30, 30)).save(path, format=kind.upper())
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(info.value).startswith(f"checkpoint {path} {expected}"), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["ViT-B_16.npz", "weights.pth", "array.npy"])
def test_numpy_files_are_named_for_what_they_are(tmp_path, name):
    """Google's ViT releases are JAX/Flax .npz archives; given as weights they read 'truncated or corrupt: Expected
    hasRecord("version") to be true, but got false.  (Could this error message be improved? ...)' (a .npy
    'Unsupported operand 147')."""
    import numpy as np

    path = tmp_path / name
    with open(path, "wb") as handle:
        if name.endswith(".npy"):
            np.save(handle, np.ones(3, np.float32))
        else:
            np.savez(handle, **{"Transformer/encoder_norm/scale": np.ones(3, np.float32)})
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    expected = ("is a NumPy array file (.npy), not a weights file" if name.endswith(".npy") else
                "is a NumPy archive (.npz), not a PyTorch weights file: JAX/Flax weights (Google's ViT releases) are "
                "read by timm's ViTs (model.load_pretrained(FILE)), whose state_dict() loads here")
    assert str(info.value) == f"checkpoint {path} {expected}"


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("legacy", [False, True])
def test_a_file_saved_with_a_newer_pickle_protocol_is_named_so_not_called_damaged(tmp_path, protocol, legacy):
    """torch.save(..., pickle_protocol=4) writes a sound file that PyTorch's weights-only loader cannot read (its
    FRAME opcode): it read 'truncated or corrupt: Unsupported operand 149'."""
    path = tmp_path / "weights.pth"
    torch.save(state(), path, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(info.value) == (
        f"checkpoint {path} was saved with pickle protocol {protocol} (torch.save(..., pickle_protocol={protocol})), "
        "which PyTorch's weights-only loader does not read; where you trust the file, save it again with torch.save's "
        "default protocol")


def test_a_torchscript_archive_is_named_and_never_advised_to_unpickle(tmp_path):
    """A TorchScript archive (torch.jit.save's: clean-fid's inception-2015-12-05.pt, a model exported for serving)
    printed torch's warning 'received a zip file that looks like a TorchScript archive', then 'is truncated or
    corrupt: Cannot use weights_only=True with TorchScript archives ... Re-running torch.load with weights_only set to
    False will likely succeed, but it can result in arbitrary code execution'."""
    path = tmp_path / "inception-2015-12-05.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} is a TorchScript archive (torch.jit.save's), not a state dict"), message
    assert "weights_only" not in message and "\n" not in message


@pytest.mark.parametrize("keep", [0.9, 0.3, 0.0])
def test_truncated_safetensors_gives_checkpoint_error(tmp_path, keep):
    whole = tmp_path / "whole.safetensors"
    save_checkpoint(whole, {f"model.{k}": v for k, v in state().items()}, meta={"model": {"name": "m"}})
    data = whole.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=rf"checkpoint {cut} is truncated or corrupt"):
        read_checkpoint(cut)


def test_safetensors_is_recognised_by_its_header(tmp_path):
    path = tmp_path / "model.bin"
    save_file(state(), str(path))
    loaded, meta = read_checkpoint(path)
    assert meta is None and all(torch.equal(loaded[k], v) for k, v in state().items())


@pytest.mark.parametrize("legacy", [False, True])
def test_a_torch_file_named_safetensors_is_read_as_what_it_is(tmp_path, legacy):
    """A torch.save file renamed model.safetensors (as if the name converted it) was read by its name alone and
    called damaged: 'is truncated or corrupt: Error while deserializing header: header too large'."""
    path = tmp_path / "model.safetensors"
    torch.save(state(), path, _use_new_zipfile_serialization=not legacy)
    loaded, meta = read_checkpoint(path)
    assert meta is None and all(torch.equal(loaded[k], v) for k, v in state().items())
    assert read_metadata(path) is None


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        read_checkpoint(tmp_path / "nothere.pth")
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        read_checkpoint(tmp_path)


def test_an_empty_path_or_one_that_is_no_path_is_refused_naming_it(tmp_path, monkeypatch):
    """checkpoint='' (a script's unset --initial-checkpoint) said 'checkpoint . is a folder' (Path('') is the working
    folder), and checkpoint=3 gave os' 'expected str, bytes or os.PathLike object, not int', naming nothing."""
    monkeypatch.chdir(tmp_path)
    save_file(state(), str(tmp_path / "checkpoint.safetensors"))  # the working folder holds a run's file
    with pytest.raises(FileNotFoundError, match=r"checkpoint path is empty \(''\)"):
        read_checkpoint("")
    with pytest.raises(TypeError, match="checkpoint must be a path .*, got 3"):
        read_checkpoint(3)


@pytest.mark.parametrize("document", ['{"run": {"data": "digits"}}', '{"model": {}, "step": 3}', "[1, 2]"])
def test_a_runs_json_record_given_as_checkpoint_is_named_json_with_the_weights_beside_it(tmp_path, document):
    """It said 'truncated or corrupt: Unsupported operand 123' (torch.load reading '{' as a pickle opcode), or,
    where the JSON's ninth byte is '{', failed as a damaged safetensors file."""
    save_file(state(), str(tmp_path / "checkpoint.safetensors"))
    (tmp_path / "checkpoint.json").write_text(document)
    for read in (read_metadata, read_checkpoint):
        with pytest.raises(CheckpointError, match=f"is a JSON document, not a weights file; the run's weights are "
                                                  f"{tmp_path / 'checkpoint.safetensors'}"):
            read(tmp_path / "checkpoint.json")
    (tmp_path / "checkpoint.json").write_bytes(b"\x80\x02 cut short")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "checkpoint.json")


def test_a_run_folder_given_as_checkpoint_is_named_a_folder_with_the_file_inside(tmp_path):
    """read_metadata (what eval/predict/sample call first) said such a folder 'does not exist'."""
    save_file(state(), str(tmp_path / "checkpoint.safetensors"))
    for read in (read_metadata, read_checkpoint):
        with pytest.raises(CheckpointError, match=f"did you mean {tmp_path / 'checkpoint.safetensors'}"):
            read(tmp_path)


def test_save_and_read_round_trip_with_shared_tensors(tmp_path):
    tensors = state()
    tied = torch.randn(6, 4)
    tensors["embed.weight"] = tied
    tensors["head.weight"] = tied  # tied weights share storage, which safetensors refuses as such
    tensors["view.weight"] = tied[:3]
    tensors["transposed"] = tied.t()
    meta = {"model": {"name": "resnet18", "args": {"num_classes": 6, "out_indices": [1, 2]}}, "step": 12}
    path = tmp_path / "run" / "last.safetensors"
    save_checkpoint(path, tensors, meta)
    loaded, read_meta = read_checkpoint(path)
    assert read_meta == meta
    assert json.loads((tmp_path / "run" / "last.json").read_text()) == meta
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.json", "last.safetensors"]


def test_save_refuses_unserialisable_metadata(tmp_path):
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "x.safetensors", state(), meta={"model": object()})
    assert not list(tmp_path.iterdir())


def test_corrupt_metadata_gives_checkpoint_error(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file(state(), str(path), metadata={"visionzoo": "{not json"})
    with pytest.raises(CheckpointError, match="corrupt metadata"):
        read_checkpoint(path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_checkpoint(path, state(0), {"step": 1})

    def failing(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, failing)
    loaded, meta = read_checkpoint(path)
    assert meta == {"step": 1} and torch.equal(loaded["conv.weight"], state(0)["conv.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.json", "weights.safetensors"]


def test_model_state_sections():
    tensors = {"model.a": torch.zeros(1), "ema.a": torch.ones(1), "optimizer.state.0": torch.zeros(2)}
    assert model_state(tensors, {"step": 1}).keys() == {"a"}
    assert torch.equal(model_state(tensors, {"step": 1}, ema=True)["a"], torch.ones(1))
    no_ema = {"model.a": torch.zeros(1)}
    assert torch.equal(model_state(no_ema, {}, ema=True)["a"], torch.zeros(1))
    foreign = {"conv.weight": torch.zeros(1)}
    assert model_state(foreign, None) == foreign


def test_read_metadata_returns_ours_without_tensors_and_none_for_foreign(tmp_path):
    from safetensors.torch import save_file

    from visionzoo.checkpoint import read_metadata, save_checkpoint

    ours = tmp_path / "ours.safetensors"
    save_checkpoint(ours, {"model.w": torch.ones(2)}, {"model": {"name": "resnet18", "args": {}}, "step": 3})
    assert read_metadata(ours) == {"model": {"name": "resnet18", "args": {}}, "step": 3}
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, foreign)
    assert read_metadata(foreign) is None
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoints_get_the_mode_open_gives_under_the_umask(tmp_path, umask):
    """They were written 0o600 (mkstemp's mode) whatever the umask, unlike the run's other files."""
    path = tmp_path / "run" / "checkpoint.safetensors"
    previous = os.umask(umask)
    try:
        assert process_umask() == umask
        save_checkpoint(path, state(0), {"step": 1})
        save_checkpoint(path, state(1), {"step": 2})  # replacing a file too
    finally:
        os.umask(previous)
    for written in (path, path.with_suffix(".json")):
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask, written
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.json", "checkpoint.safetensors"]


def test_read_metadata_tells_a_foreign_pth_from_a_damaged_one(tmp_path):
    """A torchvision/timm .pth said "truncated or corrupt": it is valid, only not ours (no metadata)."""
    from visionzoo.checkpoint import read_metadata

    foreign = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state(0), foreign)
    assert read_metadata(foreign) is None
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(foreign.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="damaged.pth is truncated or corrupt"):
        read_metadata(damaged)
    unsafe = tmp_path / "unsafe.pth"
    torch.save(TaggedDict(state()), unsafe)
    with pytest.raises(CheckpointError, match="refused for safety"):
        read_metadata(unsafe)


def test_numpy_scalars_and_dtypes_beside_the_weights_load_as_plain_data(tmp_path):
    """A training script's torch.save({"state_dict": sd, "best": np.float64(0.5)}) was "refused for safety": numpy's
    scalars and dtypes are data (a dtype and raw bytes), so they are allowed as argparse.Namespace is, also under
    numpy 1's module name; any other class beside them is still refused."""
    import numpy as np

    extras = {"best": np.float64(0.5), "epoch": np.int64(7), "ema": np.bool_(True), "lr": np.float32(0.1),
              "dtype": np.dtype("float16")}
    torch.save({"state_dict": state(), **extras}, tmp_path / "numpy.pth")
    loaded, _ = read_checkpoint(tmp_path / "numpy.pth")
    assert all(torch.equal(loaded[k], v) for k, v in state().items())
    assert load_torch_file(tmp_path / "numpy.pth")["best"] == np.float64(0.5)

    torch.save({"state_dict": state(), "best": np.float64(0.25)}, tmp_path / "new.pth",
               _use_new_zipfile_serialization=False)  # a legacy file: its GLOBAL can be renamed in place
    old = (tmp_path / "new.pth").read_bytes().replace(b"numpy._core.multiarray\nscalar\n",
                                                      b"numpy.core.multiarray\nscalar\n")
    (tmp_path / "numpy1.pth").write_bytes(old)
    assert load_torch_file(tmp_path / "numpy1.pth")["best"] == 0.25

    torch.save({"state_dict": state(), "best": np.float64(0.5), "extra": Payload()}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="refused for safety.*_record_unpickling"):
        read_checkpoint(tmp_path / "unsafe.pth")
    assert UNPICKLED == []
