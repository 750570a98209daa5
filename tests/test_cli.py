from __future__ import annotations

from dr_ray.cli import main


def test_missing_dataset_root_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    rc = main(["preprocess", "--set", "data.dataset=eyepacs", "--set", f"data.root={tmp_path}/nope",
               "--set", f"output.dir={tmp_path}/out"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "dr-ray preprocess: error: FileNotFoundError" in err and f"{tmp_path}/nope" in err
    assert "Traceback" not in err


def test_config_error_exit_code(tmp_path, capsys):
    assert main(["preprocess", "--set", "preprocess.sise=3"]) == 2
    assert "did you mean 'size'" in capsys.readouterr().err
