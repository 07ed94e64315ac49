import shutil

import pytest


@pytest.fixture(scope="module", autouse=True)
def remove_module_temp_dirs(tmp_path_factory):
    """Delete the folders a module's fixtures made (timm and torchvision checkpoints) when the module ends.

    With `tmp_path_retention_policy = "failed"` pytest removes a passed test's own folder at once but
    keeps the fixtures' until the session ends; kept, they add up to gigabytes over the suite. The
    folders of failed tests (named after the test) are kept for inspection.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    for path in set(base.iterdir()) - before:
        if path.is_dir() and not path.name.startswith("test_"):
            shutil.rmtree(path, ignore_errors=True)
