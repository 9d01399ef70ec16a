"""Stock files of Debian packages, as shipped, for tests that need them byte for byte."""

from __future__ import annotations

from pathlib import Path

NFT_FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "nft"
# Debian 12's /etc/nftables.conf (package nftables 1.0.6) starts with this line. ansible-test's
# shebang check refuses any '#!' line it does not know, so the fixture is stored without it and
# the line is put back here.
NFT_SHEBANG = "#!/usr/sbin/nft -f\n"


def debian_nftables_conf() -> str:
    return NFT_SHEBANG + (NFT_FIXTURES / "debian-nftables.conf").read_text()
