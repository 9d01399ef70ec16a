# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The nf_tables generation of a network namespace, read over netlink (NFT_MSG_GETGEN).

The kernel adds one to it for every committed nf_tables transaction (nft -f, iptables-nft-restore),
so reading it just before and just after an apply shows whether that apply, and nothing else,
was committed. Used by nft_ruleset and iptables_ruleset (nft backend) to verify an apply without
listing a big ruleset again.
"""

from __future__ import annotations

import socket
import struct
import typing as t

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLM_F_REQUEST = 1
NLMSG_HDR = struct.Struct("=IHHII")


def generation_request(seq: int = 1) -> bytes:
    """An NFT_MSG_GETGEN request: a netlink header and an nfgenmsg (AF_UNSPEC, version 0)."""
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, NLM_F_REQUEST, seq, 0) + body


def parse_generation(data: bytes) -> t.Optional[int]:
    """NFTA_GEN_ID of the NFT_MSG_NEWGEN message in a netlink reply, or None (an error, or no such message)."""
    off = 0
    while off + NLMSG_HDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, off)
        if length < NLMSG_HDR.size:
            break
        if mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
            pos, end = off + NLMSG_HDR.size + 4, min(off + length, len(data))
            while pos + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, pos)
                if alen < 4 or pos + alen > end:
                    break
                if atype & 0x3FFF == NFTA_GEN_ID and alen >= 8:
                    return int(struct.unpack_from(">I", data, pos + 4)[0])
                pos += (alen + 3) & ~3
        off += (length + 3) & ~3
    return None


def ruleset_generation() -> t.Optional[int]:
    """This network namespace's nf_tables generation, which the kernel advances by one per committed
    transaction; None when it cannot be read (then the caller re-reads the tables instead)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except (OSError, AttributeError):
        return None
    with sock:
        try:
            sock.settimeout(5)
            sock.bind((0, 0))
            sock.send(generation_request())
            return parse_generation(sock.recv(65536))
        except OSError:
            return None
