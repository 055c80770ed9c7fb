"""CrypTen's per-operation settings from a snapshot (``patches.crypten_settings``): the
same values as the live config, refreshed whenever CrypTen replaces its config object,
installed in every launched party and fully undone."""

from __future__ import annotations

from crypten_mpcache.patches import crypten_settings  # CrypTen's torch 2.x fixes first
from crypten_mpcache.runtime.launcher import LaunchConfig, launch

cfg = crypten_settings.crypten_cfg
crypten_debug, crypten_encoder, _ = crypten_settings.MODULES
FixedPointEncoder = crypten_encoder.FixedPointEncoder


def test_the_snapshot_follows_every_replacement_of_the_config() -> None:
    originals = [module.cfg for module in crypten_settings.MODULES]
    crypten_settings.PATCH.install()
    try:
        assert all(module.cfg is not cfg for module in crypten_settings.MODULES)
        assert FixedPointEncoder().scale == 2 ** 16
        with cfg.temp_override({"encoder.precision_bits": 10,
                                "debug.validation_mode": True}):
            assert FixedPointEncoder().scale == 2 ** 10
            assert crypten_debug.cfg.debug.validation_mode is True
        assert FixedPointEncoder().scale == 2 ** 16
        assert crypten_debug.cfg.debug.validation_mode is False
        cfg["encoder.precision_bits"] = 12                # a merge: a new config object
        try:
            assert FixedPointEncoder().scale == 2 ** 12
        finally:
            cfg["encoder.precision_bits"] = 16
        assert crypten_encoder.cfg.mpc.protocol == cfg.mpc.protocol   # forwarded
    finally:
        crypten_settings.PATCH.uninstall()
    assert [module.cfg for module in crypten_settings.MODULES] == originals
    assert crypten_encoder.cfg is cfg


def _party() -> dict:
    import crypten

    x = crypten.cryptensor([1.5, -2.25])
    return {"installed": crypten_settings.PATCH.installed,
            "view": type(crypten_encoder.cfg).__name__,
            "value": (x * x).get_plain_text().tolist()}


def test_every_launched_party_reads_the_snapshot() -> None:
    results = launch(_party, config=LaunchConfig(dealer="tfp", timeout_s=120))
    assert all(r["installed"] and r["view"] == "SettingsView" for r in results)
    assert results[0]["value"] == [2.25, 5.0625]
    assert not crypten_settings.PATCH.installed      # the parent never installed it
