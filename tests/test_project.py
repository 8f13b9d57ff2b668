"""`cnnlab init`: a directory becomes a project, and nothing a user wrote is replaced."""

from __future__ import annotations

import os


def test_init_makes_a_project_and_keeps_a_users_files(cli, tmp_path):
    project = tmp_path / "p"
    (project / "conf").mkdir(parents=True)
    (project / "conf" / "README.md").write_text("my notes\n")
    (project / ".gitignore").write_text("mine\n")
    code, out, err = cli("init", str(project))
    assert code == 0, err
    assert (project / "conf" / "README.md").read_text() == "my notes\n"
    assert (project / ".gitignore").read_text() == "mine\n"
    assert "kept your" in out and "README.md" in out
    assert (project / "conf" / "config.yaml").exists() and (project / "runs").is_dir()
    code, out, err = cli("init", str(project))
    assert code == 2 and "a cnnlab project already" in err


def test_init_with_an_empty_name_refuses_instead_of_taking_the_current_directory(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("init", "")
    assert code == 2 and "empty directory name" in err
    assert os.listdir(tmp_path) == [p for p in os.listdir(tmp_path) if p in ("runs", "data")]  # nothing made


def test_init_on_a_file_or_an_unmakeable_path_is_one_paragraph(cli, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    code, out, err = cli("init", str(file))
    assert code == 2 and "is a file, not a directory" in err and "Traceback" not in err
    assert file.read_text() == "x"
    code, out, err = cli("init", str(file / "p"))  # a path through a file: cannot be made, root or not
    assert code == 2 and "Could not make" in err and "Traceback" not in err
