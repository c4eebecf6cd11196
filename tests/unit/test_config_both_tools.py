"""One settings loader (netplugin/settings.py) for netplugin and drctl: the
same layers, the same file rules and the same messages in both tools."""

from __future__ import annotations

import pytest

from netplugin import config as np_config
from netplugin.backup import config as dr_config
from netplugin.errors import InvalidRequest

TOOLS = [pytest.param(np_config, "NETPLUGIN_", "DEFAULT_CONFIG_FILE", "host_id", id="netplugin"),
         pytest.param(dr_config, "DRCTL_", "DEFAULT_FILE", "image", id="drctl")]


@pytest.fixture(autouse=True)
def no_default_files(monkeypatch, tmp_path):
    monkeypatch.setattr(np_config, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent-netplugin.toml"))
    monkeypatch.setattr(dr_config, "DEFAULT_FILE", str(tmp_path / "absent-drctl.toml"))


@pytest.mark.parametrize("mod,prefix,default,field", TOOLS)
def test_a_missing_default_file_is_fine(mod, prefix, default, field):
    assert mod.load(env={}) is not None


@pytest.mark.parametrize("mod,prefix,default,field", TOOLS)
def test_a_missing_file_named_by_the_variable_is_an_error(mod, prefix, default, field, tmp_path):
    absent = tmp_path / "nope.toml"
    with pytest.raises(InvalidRequest) as exc:
        mod.load(env={prefix + "CONFIG": str(absent)})
    assert exc.value.message == f"config file {absent} does not exist"


@pytest.mark.parametrize("mod,prefix,default,field", TOOLS)
def test_a_missing_file_named_by_the_flag_is_an_error(mod, prefix, default, field, tmp_path):
    absent = tmp_path / "nope.toml"
    with pytest.raises(InvalidRequest) as exc:
        mod.load(str(absent), env={})
    assert exc.value.message == f"config file {absent} does not exist"


@pytest.mark.parametrize("mod,prefix,default,field", TOOLS)
def test_layers_file_then_environment_then_flags(mod, prefix, default, field, tmp_path, monkeypatch):
    path = tmp_path / "default.toml"
    path.write_text(f'{field} = "from-file"\n')
    monkeypatch.setattr(mod, default, str(path))
    assert getattr(mod.load(env={}), field) == "from-file"
    assert getattr(mod.load(env={prefix + field.upper(): "from-env"}), field) == "from-env"
    assert getattr(mod.load(env={prefix + field.upper(): "from-env"}, overrides={field: "from-flag"}),
                   field) == "from-flag"


@pytest.mark.parametrize("mod,prefix,default,field", TOOLS)
def test_same_messages_for_bad_files(mod, prefix, default, field, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("nosuch_setting = 1\n")
    with pytest.raises(InvalidRequest) as exc:
        mod.load(str(path), env={})
    assert exc.value.message == f"config file {path}: unknown setting 'nosuch_setting'"
    path.write_text("x = [unclosed\n")
    with pytest.raises(InvalidRequest) as exc:
        mod.load(str(path), env={})
    assert exc.value.message.startswith(f"cannot read config file {path}: ")


def test_drctl_numbers_and_switches():
    with pytest.raises(InvalidRequest) as exc:
        dr_config.load(env={"DRCTL_MAX_JOBS": "many"})
    assert exc.value.message == "setting max_jobs must be a whole number, not 'many'"
    with pytest.raises(InvalidRequest) as exc:
        dr_config.load(env={"DRCTL_STRICT": "perhaps"})
    assert exc.value.message == "setting strict must be true or false, not 'perhaps'"
    assert dr_config.load(env={"DRCTL_STRICT": "off"}).strict is False


def test_netctl_says_a_named_file_is_missing(tmp_path, capsys):
    from netplugin.cli.main import run
    assert run(["--config", str(tmp_path / "nope.toml"), "network", "ls"]) == 1
    assert capsys.readouterr().err == f"netctl: config file {tmp_path / 'nope.toml'} does not exist\n"
