"""The layering and start-up promises of the layout (README, Architecture)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package root -> harken packages it must never import
FORBIDDEN = {"models": ("harken.engine", "harken.app"), "engine": ("harken.app",)}
#: prefixes that once stood in for folders (issue 9): folders now carry the concern
RETIRED_PREFIXES = ("tui_", "mqtt_", "speaker_", "speakers_", "bench_", "random_", "eval_",
                    "task_")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("root", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(root: str) -> None:
    offenders = [f"{path.relative_to(ROOT)} imports {name}"
                 for path in sorted((ROOT / root).rglob("*.py"))
                 for name in _imports(path)
                 if name.startswith(FORBIDDEN[root])]
    assert offenders == []


def test_models_never_import_asyncio() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "models").rglob("*.py"))
                 if "asyncio" in _imports(p)]
    assert offenders == []


def test_no_module_name_stands_in_for_a_folder() -> None:
    offenders = [str(p.relative_to(ROOT)) for root in ("app", "engine", "models")
                 for p in sorted((ROOT / root).rglob("*.py"))
                 if p.name.startswith(RETIRED_PREFIXES)]
    assert offenders == []


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120)
    return set(out.stdout.split())


def test_engine_core_and_stages_import_without_torch() -> None:
    loaded = _loaded_after(
        "import harken.engine.pipeline, harken.engine.bus, harken.engine.worker\n"
        "import harken.engine.stages.captions, harken.engine.stages.speakers\n"
        "import harken.engine.stages.keywords, harken.engine.stages.translation\n"
        "import harken.engine.stages.refine, harken.engine.sinks.refined\n"
        "import harken.engine.sinks.files, harken.engine.sinks.printer")
    assert "harken.engine.pipeline" in loaded
    assert "torch" not in loaded
    assert "transformers" not in loaded


def test_help_and_a_bad_flag_never_load_torch() -> None:
    loaded = _loaded_after(
        "import contextlib, io\n"
        "from harken.app.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()), "
        "contextlib.redirect_stderr(io.StringIO()):\n"
        "    main(['run', '--help'])\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stderr(io.StringIO()):\n"
        "    main(['run', '--hop', 'soon'])")
    assert "harken.app.flags" in loaded
    assert "torch" not in loaded


def test_a_bad_input_file_or_setting_fails_before_torch_loads(tmp_path: Path) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    loaded = _loaded_after(
        "import contextlib, io\n"
        "from harken.app.cli import main\n"
        "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
        f"    code = main(['transcribe', {str(not_audio)!r}])\n"
        "    bad = main(['run', '--input', 'x.wav', '--hop', '-1'])\n"
        "assert code == 2 and bad == 2, (code, bad)\n"
        "assert 'notes.wav' in err.getvalue(), err.getvalue()\n"
        "assert 'captions.hop_s' in err.getvalue(), err.getvalue()")
    assert "harken.app.cli" in loaded
    assert "torch" not in loaded


def test_config_show_resolves_speaker_thresholds_without_torch() -> None:
    loaded = _loaded_after(
        "import contextlib, io\n"
        "from harken.app.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert main(['config', 'show']) == 0\n"
        "row = next(r for r in out.getvalue().splitlines() if r.startswith('speakers.margin'))\n"
        "assert 'null' not in row and 'generic default' in row, row")
    assert "harken.app.commands.config" in loaded
    assert "torch" not in loaded
