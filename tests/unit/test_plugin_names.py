"""Names in ha.investigators.order/exclude and ha.fence.builders.exclude must name something.

A typo in one of these lists used to be accepted silently: the witness meant to
be first, or the fencer meant to be left out, stayed where it was. The chains
are built when the management server (or the simulator) is assembled, so the
check stops start-up, not the first investigation.
"""

from __future__ import annotations

import importlib.metadata

import pytest

from cloudha.errors import ConfigurationError
from cloudha.fencing.registry import (
    BUILTIN_FENCERS,
    CLOUDSTACK_FENCERS,
    FencerContext,
    build_fence_chain,
)
from cloudha.investigators import InvestigatorContext, build_chain
from cloudha.investigators.registry import BUILTIN_INVESTIGATORS, CLOUDSTACK_INVESTIGATORS
from cloudha.plugins import check_names
from cloudha.settings import Settings
from cloudha.testing import FakeAgentGateway, FakeClock, InMemoryHostDirectory
from tests.unit.plugin_examples import ExampleInvestigator


def investigators(settings: Settings) -> InvestigatorContext:
    return InvestigatorContext(
        clock=FakeClock(),
        directory=InMemoryHostDirectory(),
        gateway=FakeAgentGateway(),
        settings=settings,
    )


def fencers(settings: Settings) -> FencerContext:
    return FencerContext(
        clock=FakeClock(),
        directory=InMemoryHostDirectory(),
        gateway=FakeAgentGateway(),
        settings=settings,
    )


def ep(name: str, target: str, group: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name, f"tests.unit.plugin_examples:{target}", group)


# -- investigators -------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "unknown", "closest"),
    [
        (
            "ha.investigators.order",
            "KVMInvestigatr,SimpleInvestigator",
            "KVMInvestigatr",
            "KVMInvestigator",
        ),
        ("ha.investigators.exclude", "PingInvestigatr", "PingInvestigatr", "PingInvestigator"),
        # Names are case-sensitive, as in CloudStack; the right spelling is suggested.
        (
            "ha.investigators.exclude",
            "libvirtinvestigator",
            "libvirtinvestigator",
            "LibvirtInvestigator",
        ),
        ("ha.investigators.order", "SimpleInvestigator,Nothing", "Nothing", None),
    ],
)
def test_an_unknown_investigator_name_is_refused_at_construction(
    key: str, value: str, unknown: str, closest: str | None
) -> None:
    settings = Settings.from_mapping({key: value})
    with pytest.raises(ConfigurationError) as info:
        build_chain(investigators(settings), discover=False)
    message = str(info.value)
    assert message.startswith(f"{key}: unknown investigator {unknown!r}")
    assert info.value.key == key
    assert info.value.value == unknown
    if closest is not None:
        assert f"(did you mean {closest!r}?)" in message
    else:
        assert "did you mean" not in message
    assert "LibvirtInvestigator" in message  # the known names are listed


def test_cloudstack_names_are_accepted_even_without_such_an_investigator() -> None:
    # CloudStack's default order names Hyperv and Ovm3, which cloudha does not have.
    settings = Settings.from_mapping(
        {
            "ha.investigators.exclude": [
                "HypervInvestigator",
                "Ovm3Investigator",
                "Simulator Investigator",
            ],
            # KVMInvestigator and LibvirtInvestigator need ports this context lacks.
            "ha.investigators.order": "LibvirtInvestigator,KVMInvestigator,SimpleInvestigator",
        }
    )
    chain = build_chain(investigators(settings), discover=False)
    assert chain.names[0] == "SimpleInvestigator"
    assert Settings().ha_investigators_order == tuple(
        n for n in Settings().ha_investigators_order if n in CLOUDSTACK_INVESTIGATORS
    )
    assert {"LibvirtInvestigator", "KVMInvestigator", "SimpleInvestigator"} <= BUILTIN_INVESTIGATORS


def test_plugin_and_extra_investigator_names_are_known() -> None:
    settings = Settings.from_mapping({"ha.investigators.order": "ExamplePlugin,Extra"})
    extra = ExampleInvestigator(investigators(Settings()))
    extra.name = "Extra"
    group = "cloudha.investigators"
    chain = build_chain(
        investigators(settings),
        extra=[extra],
        entry_points=[ep("a", "ExampleInvestigator", group)],
    )
    assert chain.names[:2] == ["ExamplePlugin", "Extra"]
    # Without the plugin installed the same setting is a typo.
    with pytest.raises(ConfigurationError, match="unknown investigator 'ExamplePlugin'"):
        build_chain(investigators(settings), extra=[extra], discover=False)


def test_the_default_settings_build_a_chain() -> None:
    assert build_chain(investigators(Settings()), discover=False).names


# -- fence builders ------------------------------------------------------------


def test_an_unknown_fence_builder_name_is_refused_at_construction() -> None:
    settings = Settings.from_mapping({"ha.fence.builders.exclude": "RecreatableFencer,PowerFencr"})
    with pytest.raises(ConfigurationError) as info:
        build_fence_chain(fencers(settings), discover=False)
    message = str(info.value)
    assert message.startswith(
        "ha.fence.builders.exclude: unknown fence builder 'PowerFencr'"
        " (did you mean 'PowerFencer'?)"
    )
    assert info.value.key == "ha.fence.builders.exclude"
    assert info.value.value == "PowerFencr"


def test_cloudstack_and_builtin_fencer_names_are_accepted_without_their_ports() -> None:
    names = ",".join(sorted(CLOUDSTACK_FENCERS | {"PowerFencer", "SSHSoftFencer"}))
    settings = Settings.from_mapping({"ha.fence.builders.exclude": names})
    chain = build_fence_chain(fencers(settings), discover=False)
    assert all(name not in names.split(",") for (name,) in chain.names)
    assert {"PowerFencer", "LibvirtFencer", "SSHSoftFencer"} <= BUILTIN_FENCERS


def test_a_fencer_plugin_name_is_known() -> None:
    settings = Settings.from_mapping({"ha.fence.builders.exclude": "ExampleFencer"})
    group = "cloudha.fencers"
    chain = build_fence_chain(fencers(settings), entry_points=[ep("x", "ExampleFencer", group)])
    assert ["ExampleFencer"] not in chain.names
    with pytest.raises(ConfigurationError, match="unknown fence builder 'ExampleFencer'"):
        build_fence_chain(fencers(settings), discover=False)


def test_a_fence_level_typo_suggests_the_fencer() -> None:
    with pytest.raises(ConfigurationError, match=r"did you mean 'VMwareFenceBuilder'\?") as info:
        build_fence_chain(fencers(Settings()), discover=False, levels=[["VMwareFenceBuilde"]])
    assert info.value.key == "fence levels"


# -- the shared check ------------------------------------------------------------


def test_check_names_accepts_known_names_and_nothing() -> None:
    check_names("k", [], [], what="thing")
    check_names("k", ["a", "b"], ["b", "a", "c"], what="thing")
    with pytest.raises(ConfigurationError, match=r"^k: unknown thing 'd'; known: a, b$"):
        check_names("k", ["a", "d"], ["b", "a"], what="thing")
