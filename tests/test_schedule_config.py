import pytest

from dreamkit.config import load_config, resolve_config_path
from dreamkit.errors import ConfigError
from dreamkit.schedule import Schedule, range_at


def test_schedule_constant_and_threestudio_form():
    assert Schedule.parse(3.0)(1000) == 3.0
    s = Schedule.parse([100, 1.0, 0.0, 300])
    assert s(0) == 1.0 and s(100) == 1.0
    assert s(200) == pytest.approx(0.5)
    assert s(300) == 0.0 and s(10_000) == 0.0


def test_schedule_multi_segment():
    s = Schedule.parse([[0, 0.0], [10, 1.0], [30, 0.0]])
    assert s(5) == pytest.approx(0.5)
    assert s(20) == pytest.approx(0.5)
    assert s(40) == 0.0


@pytest.mark.parametrize("bad", ["abc", [1, 2, 3], [300, 1.0, 0.0, 100], [[0, 1], [0, 2]]])
def test_schedule_rejects_malformed(bad):
    with pytest.raises(ConfigError):
        Schedule.parse(bad, "x")


def test_range_with_scheduled_ends():
    lo, hi = range_at([0.0, [0, 10.0, 20.0, 100]], 50)
    assert (lo, hi) == (0.0, pytest.approx(15.0))


def test_shipped_config_by_name():
    assert resolve_config_path("gs_oracle").name == "gs_oracle.yaml"
    assert resolve_config_path("gs_sds.yaml").name == "gs_sds.yaml"


def test_config_loads_and_is_strict():
    cfg = load_config("gs_oracle.yaml", ["trainer.max_steps=7", "seed=3"])
    assert cfg.trainer.max_steps == 7 and cfg.seed == 3
    assert cfg.representation.densify.refine_every == 100  # component defaults filled in
    with pytest.raises(ConfigError, match=r"trainer.max_steps"):
        load_config("gs_oracle.yaml", ["trainer.max_stepz=7"])
    with pytest.raises(ConfigError, match=r"representation.num_points"):
        load_config("gs_oracle.yaml", ["representation.num_pointz=7"])
    with pytest.raises(ConfigError, match=r"trainer.max_steps"):
        load_config("gs_oracle.yaml", ["trainer.max_steps=abc"])
    with pytest.raises(ConfigError, match=r"> 0"):
        load_config("gs_oracle.yaml", ["trainer.max_steps=-5"])
    with pytest.raises(ConfigError, match=r"prompt is empty"):
        load_config("gs_oracle.yaml", ["prompt="])
    with pytest.raises(ConfigError, match=r"not found"):
        load_config("no_such_config.yaml", [])
    with pytest.raises(ConfigError, match=r"guidance.guidance_scale"):
        load_config("gs_oracle.yaml", ["guidance.guidance_scale=[1,2]"])
    with pytest.raises(ConfigError, match=r"did you mean gaussians"):
        load_config("gs_oracle.yaml", ["representation.name=gausians"])


def test_schedules_accepted_anywhere_marked():
    cfg = load_config("gs_oracle.yaml", ["guidance.guidance_scale=[0,7.5,100,1000]",
                                         "camera.elevation_range=[0,[0,10,45,500]]"])
    assert list(cfg.guidance.guidance_scale) == [0, 7.5, 100, 1000]


def test_priors_are_built_only_through_the_registry(monkeypatch):
    """build_prior and check_prior_config dispatch on prior.type through the registry (no if-chain): a class
    registered under a new name is used as it is."""
    from dreamkit import registry
    from dreamkit.priors.configs import build_prior, check_prior_config

    calls = []

    class Fake:
        @classmethod
        def from_config(cls, cfg, device):
            calls.append(("build", cfg.type, str(device)))
            return "prior"

        @staticmethod
        def check_config(cfg):
            calls.append(("check", cfg.type))

    monkeypatch.setitem(registry.REGISTRY["prior"], "fake", ("x:y", "x:z", "a test prior"))
    monkeypatch.setattr(registry, "_load", lambda path: Fake if path == "x:y" else None)
    cfg = type("Cfg", (), {"type": "fake", "name": "f"})()
    check_prior_config(cfg)
    assert build_prior(cfg, "cpu") == "prior"
    assert calls == [("check", "fake"), ("build", "fake", "cpu")]
