"""The `azureml.core` stand-ins: Model.get_model_path over AZUREML_MODEL_DIR, an offline Run, and an import hook
that never shadows a real azureml-core."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_parallel_run.azure.azureml_core import Model, ModelNotFoundException, Run, WebserviceException


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    (root / "iris" / "1").mkdir(parents=True)
    (root / "iris" / "1" / "model.pkl").write_text("v1")
    (root / "iris" / "2").mkdir()
    (root / "iris" / "2" / "model.pkl").write_text("v2")
    (root / "mnist-prs" / "3" / "models").mkdir(parents=True)  # a model registered from a folder
    (root / "plain").mkdir()
    (root / "plain" / "weights.bin").write_text("w")
    (root / "single.pkl").write_text("s")
    (root / "two" / "1").mkdir(parents=True)
    (root / "two" / "1" / "a").write_text("a")
    (root / "two" / "1" / "b").write_text("b")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(root))
    return root


def test_get_model_path_as_azure_lays_models_out(models: Path) -> None:
    assert Model.get_model_path("iris") == str(models / "iris" / "2" / "model.pkl")  # the highest version
    assert Model.get_model_path("iris", version=1) == str(models / "iris" / "1" / "model.pkl")
    assert Model.get_model_path("mnist-prs") == str(models / "mnist-prs" / "3" / "models")
    assert Model.get_model_path("plain") == str(models / "plain")
    assert Model.get_model_path("single.pkl") == str(models / "single.pkl")


def test_a_missing_model_lists_what_is_there(models: Path) -> None:
    with pytest.raises(ModelNotFoundException) as info:
        Model.get_model_path("mnist")
    message = str(info.value)
    assert f"AZUREML_MODEL_DIR={str(models)!r}" in message
    assert (
        "iris (versions 1, 2)" in message and "mnist-prs (versions 3)" in message and "single.pkl" in message
    )
    with pytest.raises(ModelNotFoundException, match="iris has versions 1, 2"):
        Model.get_model_path("iris", version=7)
    with pytest.raises(ModelNotFoundException, match="no version folders"):
        Model.get_model_path("plain", version=1)
    with pytest.raises(WebserviceException, match="can contain only 1 file or folder"):
        Model.get_model_path("two")
    with pytest.raises(WebserviceException, match="version should be an int"):
        Model.get_model_path("iris", version="1")  # type: ignore[arg-type]


def test_without_a_model_dir_the_error_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)
    with pytest.raises(ModelNotFoundException, match="side input and set environment_variables"):
        Model.get_model_path("iris")


def test_offline_run_logs(caplog: pytest.LogCaptureFixture) -> None:
    run = Run.get_context()
    assert run is Run.get_context()
    with caplog.at_level("INFO"):
        run.log("accuracy", 0.9)
        run.parent.log("models", 3)
        run.tag("store", 1000)
    assert run.get_metrics() == {"accuracy": 0.9} and run.get_tags() == {"store": "1000"}
    text = caplog.text
    assert "run.log('accuracy', 0.9)" in text and "run.parent.log('models', 3)" in text
    with pytest.raises(RuntimeError, match="no Azure ML run here"):
        Run.get_context(allow_offline=False)


def python(code: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    env_path = ":".join(str(p) for p in paths)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"} if paths else None,
        timeout=60,
    )


def test_the_fallback_serves_v1_imports() -> None:
    done = python(
        """
        from airflow_parallel_run.azure.azureml_fallback import install_azureml_core_fallback
        assert install_azureml_core_fallback()
        from azureml.core import Model, Run
        from azureml.core.model import Model as M2
        from azureml.core.run import Run as R2
        assert Model is M2 and Run is R2
        try:
            from azureml.core import Workspace
        except ImportError as exc:
            print("IMPORT", exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "IMPORT azureml.core.Workspace needs an Azure ML workspace" in done.stdout


def test_a_real_azureml_core_wins(tmp_path: Path) -> None:
    real = tmp_path / "site" / "azureml" / "core"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    repo = Path(__file__).resolve().parents[2]
    done = python(
        """
        from airflow_parallel_run.azure.azureml_fallback import install_azureml_core_fallback
        assert not install_azureml_core_fallback()
        import azureml.core
        assert azureml.core.REAL
        print("ok")
        """,
        tmp_path / "site",
        repo,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_other_azureml_packages_keep_working_beside_it(tmp_path: Path) -> None:
    """`azureml` as a namespace of other packages (azureml-dataprep, azureml-fsspec) stays one."""
    other = tmp_path / "site" / "azureml" / "dataprep"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("DATAPREP = True\n")
    repo = Path(__file__).resolve().parents[2]
    done = python(
        """
        from airflow_parallel_run.azure.azureml_fallback import install_azureml_core_fallback
        assert install_azureml_core_fallback()
        import azureml.dataprep
        from azureml.core import Model
        assert azureml.dataprep.DATAPREP and Model.get_model_path
        print("ok")
        """,
        tmp_path / "site",
        repo,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
