"""The config system: typed YAML, dotted overrides, errors that name the key and the file."""

import pytest

from ovdet.config import Config, LoaderConfig, load_config, to_yaml
from ovdet.errors import OvdetError


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_values_reach_typed_fields(tmp_path):
    path = write(tmp_path, "train:\n  steps: 7\n  lr: 1\nloader:\n  prompt_templates: ['{}']\n")
    cfg = load_config(path)
    assert cfg.train.steps == 7
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.loader.prompt_templates == ["{}"]
    assert cfg.model.name == Config().model.name


def test_dotted_overrides_parse_yaml_values(tmp_path):
    path = write(tmp_path, "train:\n  steps: 7\n")
    cfg = load_config(path, ["train.steps=9", "loader.shard_dirs=[a, b]", "model.freeze_text=false"])
    assert cfg.train.steps == 9
    assert cfg.loader.shard_dirs == ["a", "b"]
    assert cfg.model.freeze_text is False


def test_override_into_a_list_of_sources(tmp_path):
    path = write(tmp_path, "data:\n  sources:\n    - {name: a, kind: detection, format: coco, paths: [x.json]}\n")
    cfg = load_config(path, ["data.sources.0.weight=3"])
    assert cfg.data.sources[0].weight == 3.0


def test_one_loss_weight_updates_the_defaults_instead_of_replacing_them(tmp_path):
    path = write(tmp_path, "loss:\n  weights: {loss_giou: 3}\n")
    cfg = load_config(path, ["loss.weights.loss_image=0.1"])
    assert cfg.loss.weights == {**Config().loss.weights, "loss_giou": 3.0, "loss_image": 0.1}


def test_unknown_loss_weight_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "train:\n  steps: 3\n")
    with pytest.raises(OvdetError, match=r"cfg\.yaml: unknown key 'loss\.weights\.loss_imge' \(known: loss_labels"):
        load_config(path, ["loss.weights.loss_imge=0.1"])


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "train:\n  stepz: 3\n")
    with pytest.raises(OvdetError, match=r"cfg\.yaml: unknown key 'train\.stepz'"):
        load_config(path)


def test_wrong_type_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "train:\n  steps: many\n")
    with pytest.raises(OvdetError, match=r"cfg\.yaml: key 'train\.steps' must be an integer, got 'many'"):
        load_config(path)


def test_bool_is_not_accepted_as_a_number(tmp_path):
    with pytest.raises(OvdetError, match="train.lr"):
        load_config(write(tmp_path, "train:\n  lr: true\n"))


def test_literal_fields_reject_other_values(tmp_path):
    with pytest.raises(OvdetError, match=r"loss\.classification' must be one of \['focal', 'bce'\]"):
        load_config(write(tmp_path, "loss:\n  classification: softmax\n"))


def test_missing_file_and_invalid_yaml_are_user_errors(tmp_path):
    with pytest.raises(OvdetError, match="nope.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(OvdetError, match=r"bad\.yaml:3: invalid YAML"):
        load_config(write(tmp_path, "train:\n  steps: [1,\n", "bad.yaml"))


def test_bad_override_syntax_is_a_user_error():
    with pytest.raises(OvdetError, match="expected key.sub=value"):
        load_config(None, ["train.steps"])


def test_sub_config_loads_alone(tmp_path):
    cfg = load_config(write(tmp_path, "batch_size: 3\n"), cls=LoaderConfig)
    assert cfg.batch_size == 3


def test_printed_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.steps=5"])
    again = load_config(write(tmp_path, to_yaml(cfg)))
    assert again == cfg


def test_shipped_configs_load():
    assert load_config("configs/demo.yaml").run_dir == "runs/demo"
