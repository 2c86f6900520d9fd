"""`python -m components` refusing what it cannot do: one clear line, the exit status, what to run."""

from __future__ import annotations

from tests.conftest import components_cli


def test_cli_bad_param_is_one_clear_line_not_a_traceback(tmp_path, params_file):
    params = params_file()
    out = components_cli(tmp_path, "ingest", "--params", str(params), "-p", "ingest.hhar_raw.intervals=x")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: ingest.hhar_raw.intervals: expected int, got str 'x'"


def test_cli_data_error_names_the_file(tmp_path, params_file):
    params = params_file()
    out = components_cli(tmp_path, "ingest", "--params", str(params), "-p", f"ingest.data_root={tmp_path}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: " in out.stderr and "no HHAR_SA window files" in out.stderr


def test_cli_fit_latency_without_a_profile_says_which_command_to_run(tmp_path, params_file):
    out = components_cli(tmp_path, "fit_latency", "--params", str(params_file()), "--device", "ort-2t")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "no profile table" in out.stderr and "python -m components profile --device ort-2t" in out.stderr


def test_cli_compress_before_ingest_says_what_to_run(tmp_path, params_file):
    out = components_cli(tmp_path, "compress", "--params", str(params_file()), "--device", "ort-1t")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "run the ingest stage first" in out.stderr


def test_cli_a_damaged_model_is_one_line_naming_the_file_and_what_to_run(tmp_path, params_file):
    from tests.conftest import synthetic_task

    ingest, train = synthetic_task(tmp_path / "in")
    weights = train / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    out = components_cli(tmp_path, "compress", "--params", str(params_file()), "--device", "ort-1t",
                         "--input", f"ingest={ingest}", "--input", f"train={train}",
                         "-p", "compress.cost=params")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = [x for x in out.stderr.strip().splitlines() if x.startswith("error:")]
    assert f"{weights}: sha256 " in line and "run the stage that wrote this model folder again" in line
