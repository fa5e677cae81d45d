"""Stage lines: printed on stderr by the command line only, never by the Python API."""

from torchslim import _progress


def test_stage_is_silent_unless_the_command_line_enabled_it(capsys):
    with _progress.stage("calibrating"):
        pass
    assert capsys.readouterr().err == ""


def test_enabled_stage_prints_its_label_and_duration(capsys, monkeypatch):
    monkeypatch.setattr(_progress, "MIN_SECONDS_SHOWN", 0.0)

    with _progress.enabled(), _progress.stage("calibrating"):
        pass
    err = capsys.readouterr().err
    assert "calibrating: " in err and err.strip().endswith("s")
    with _progress.stage("silent again"):
        pass
    assert capsys.readouterr().err == ""
