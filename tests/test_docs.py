"""The README documents every setting the two components read."""

from __future__ import annotations

import pytest

from predictor.settings import PredictorSettings
from testing.procs import REPO_ROOT
from transformer.settings import TransformerSettings


@pytest.mark.parametrize("settings", [PredictorSettings, TransformerSettings])
def test_every_setting_is_in_the_readme_configuration_table(
        settings: type[PredictorSettings] | type[TransformerSettings]) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    rows = {line.split("|")[1].strip() for line in readme.splitlines()
            if line.startswith("| `")}
    documented = {name.strip("` ") for row in rows for name in row.split(",")}
    missing = sorted(name.upper() for name in settings.model_fields
                     if name.upper() not in documented)
    assert missing == [], f"not in the README's configuration table: {missing}"
