import pytest

import forgetkit as fk
from forgetkit.config import apply_overrides, from_dict
from forgetkit.engine.config import RunConfig
from forgetkit.errors import ForgetkitError
from forgetkit.methods.configs import resolved_method_config


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ForgetkitError, match=r"unknown config key 'config.train.step'.*did you mean 'steps'"):
        from_dict(RunConfig, {"train": {"step": 3}})
    with pytest.raises(ForgetkitError, match="unknown config key 'config.protocl'"):
        from_dict(RunConfig, {"protocl": {}})


def test_unknown_method_key_and_method():
    with pytest.raises(ForgetkitError, match=r"method\(gs_lora\).bdn.*did you mean 'bnd'"):
        resolved_method_config({"name": "gs_lora", "bdn": 3})
    with pytest.raises(ForgetkitError, match="unknown method 'gslora'.*Did you mean 'gs_lora'"):
        resolved_method_config({"name": "gslora"})


def test_types_are_checked_and_overrides_parsed():
    cfg = from_dict(RunConfig, apply_overrides({}, ["train.steps=3", "train.lr=1e-3", "protocol.requests=[[a, b]]",
                                                     "method.beta=[0.1, 0.2]"]))
    assert cfg.train.steps == 3 and cfg.train.lr == 1e-3 and cfg.protocol.requests == [["a", "b"]]
    assert resolved_method_config(cfg.method)["beta"] == [0.1, 0.2]
    with pytest.raises(ForgetkitError, match="train.steps must be an integer"):
        from_dict(RunConfig, {"train": {"steps": "many"}})
    with pytest.raises(ForgetkitError, match="must look like"):
        apply_overrides({}, ["train.steps"])


@pytest.mark.parametrize("name", fk.packaged_configs())
def test_packaged_configs_load_and_validate(name):
    cfg = fk.load_config(name)
    assert resolved_method_config(cfg.method)["name"] in fk.METHODS
    assert cfg.output_dir.startswith("runs/")


def test_resolved_method_config_fills_defaults():
    full = resolved_method_config({"alpha": 0.5})
    assert full["name"] == "gs_lora" and full["alpha"] == 0.5 and full["lora"]["rank"] == 4
    assert full["lasso_update"] == "proximal" and full["forgotten_mass_weight"] == 3.0  # the recommended GS-LoRA


def test_missing_config_file():
    with pytest.raises(ForgetkitError, match="not found.*demo"):
        fk.load_config("no/such.yaml")


def test_describe_shows_a_nested_section_s_own_default():
    """GS-LoRA's LoRA defaults to rank 4 (its default factory), not LoRASettings' class default of 8."""
    from forgetkit.config import describe
    from forgetkit.methods import METHODS

    rows = {key: default for key, default, _ in describe(METHODS.get("gs_lora").config_cls, "method.")}
    assert rows["method.lora.rank"] == "4" and rows["method.lora.lora_alpha"] == "0.5"
    assert rows["method.alpha"] == repr(resolved_method_config({})["alpha"])


def test_the_method_section_is_parsed_once_into_its_method_s_typed_config():
    from forgetkit.methods.configs import EWCConfig

    cfg = from_dict(RunConfig, {"method": {"name": "ewc", "reg_lambda": 2}})
    assert type(cfg.method) is EWCConfig and cfg.method.reg_lambda == 2.0 and cfg.method.name == "ewc"
    assert from_dict(RunConfig, {}).method.name == "gs_lora"
    with pytest.raises(ForgetkitError, match=r"method\(ewc\).reg_lambda must be a number"):
        from_dict(RunConfig, {"method": {"name": "ewc", "reg_lambda": "big"}})


def test_choice_fields_list_their_choices_in_errors_and_in_the_config_listing():
    with pytest.raises(ForgetkitError, match=r"method\(gs_lora\)\.lasso_update must be one of gradient, proximal; "
                                             r"got 'sideways'"):
        fk.load_config("demo", ["method.lasso_update=sideways"])
    with pytest.raises(ForgetkitError, match="protocol.eval_split must be one of test, val"):
        fk.ProtocolConfig(eval_split="train")       # built in Python, not read from YAML: refused the same
    from forgetkit.config import describe
    from forgetkit.methods.configs import GSLoRAConfig

    rows = {key: text for key, _, text in describe(GSLoRAConfig)}
    assert rows["grouping"].endswith("[choices: block, module, matrix]")


def test_a_renamed_key_is_read_with_a_warning_and_both_names_are_refused():
    with pytest.warns(FutureWarning, match="protocol.forget_per_task is deprecated.*protocol.classes_per_request"):
        cfg = fk.load_config("demo", ["protocol.forget_per_task=3", "protocol.num_requests=2"])
    assert cfg.protocol.classes_per_request == 3
    from forgetkit.config import from_dict
    from forgetkit.engine.config import ProtocolConfig

    with pytest.warns(FutureWarning):                      # a file of forgetkit 0.1
        assert from_dict(ProtocolConfig, {"forget_per_task": 4}, "config.protocol").classes_per_request == 4
    with pytest.raises(ForgetkitError, match="are one setting"):
        from_dict(ProtocolConfig, {"forget_per_task": 4, "classes_per_request": 4}, "config.protocol")


@pytest.mark.parametrize("old, new, value", [("num_tasks", "num_requests", 3), ("tasks", "requests", [["Bag"]])])
def test_the_task_keys_of_0_1_are_read_as_request_keys(old, new, value):
    from forgetkit.config import apply_overrides, from_dict
    from forgetkit.engine.config import ProtocolConfig

    with pytest.warns(FutureWarning, match=f"protocol.{old} is deprecated.*protocol.{new}"):
        assert getattr(fk.load_config("demo", [f"protocol.{old}={value}"]).protocol, new) == value
    with pytest.warns(FutureWarning):                      # a file of 0.1 with the old name
        assert getattr(from_dict(ProtocolConfig, {old: value}, "config.protocol"), new) == value
    # an override under the new name replaces the file's old-named setting instead of clashing with it
    data = apply_overrides({"protocol": {old: value}}, [f"protocol.{new}={value}"])
    assert data["protocol"] == {new: value}
