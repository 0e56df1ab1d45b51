"""The operator's everyday moves on the command line.

    voxdial apikey create --tenant T [--name N]     prints the new key once
    voxdial apikey list --tenant T
    voxdial leads import CAMPAIGN FILE --tenant T [--region US]
    voxdial campaign list --tenant T
    voxdial campaign {review,launch,pause,resume,archive,overview} CAMPAIGN --tenant T

They run the same functions as the admin API (`campaign_store.operations`)
against the same Redis: `VOXDIAL_REDIS_URL`, or else the private server that
a running `voxdial serve` started for the data folder, or else (nothing is
running) a private server started for this one command on the same folder.
Answers are JSON on stdout; errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from campaign_store import operations as ops
from campaign_store.errors import Conflict, NotFound, StoreError
from campaign_store.models import CampaignView
from campaign_store.redis_server import embedded_redis
from campaign_store.store import Store
from voice.settings import Settings

__all__ = ["add_commands", "open_store", "run_command"]

URL_FILE = "url"
ACTIONS = ("review", "launch", "pause", "resume", "archive", "overview")


def _redis_dir(settings: Settings) -> Path:
    return settings.data_dir / "redis"


async def open_store(
    settings: Settings, stack: contextlib.AsyncExitStack, *, serving: bool = False
) -> Store:
    """The campaign store for this process; whatever it started stops with `stack`.

    With `serving`, the embedded server's URL is written into the data folder
    for the CLI to find while this process runs, and removed on exit.
    """
    url = settings.redis_url
    if not url and not serving:
        url = await _running_embedded(settings)
    if not url:
        directory = _redis_dir(settings)
        server = stack.enter_context(embedded_redis(directory))
        url = server.url
        if serving:
            url_file = directory / URL_FILE
            url_file.write_text(url)
            stack.callback(url_file.unlink, missing_ok=True)
    store = await Store.connect(url)
    stack.push_async_callback(store.close)
    return store


async def _running_embedded(settings: Settings) -> str:
    url_file = _redis_dir(settings) / URL_FILE
    if not url_file.exists():
        return ""
    url = url_file.read_text().strip()
    probe = None
    try:
        probe = await Store.connect(url)
        return url
    except StoreError:
        return ""  # left behind by a server that is gone
    finally:
        if probe is not None:
            await probe.close()


def add_commands(commands: Any) -> None:
    """Register `apikey`, `leads` and `campaign` on the `voxdial` parser."""
    apikey = commands.add_parser("apikey", help="create or list a tenant's API keys")
    apikey.add_argument("action", choices=("create", "list"))
    apikey.add_argument("--tenant", required=True)
    apikey.add_argument("--name", default="")

    leads = commands.add_parser("leads", help="import leads into a campaign")
    leads.add_argument("action", choices=("import",))
    leads.add_argument("campaign")
    leads.add_argument("file", type=Path, help="a CSV file; - reads stdin")
    leads.add_argument("--tenant", required=True)
    leads.add_argument("--region", help="country of national-format numbers (US)")

    campaign = commands.add_parser("campaign", help="launch, pause, review, ...")
    campaign.add_argument("action", choices=("list", *ACTIONS))
    campaign.add_argument("campaign", nargs="?")
    campaign.add_argument("--tenant", required=True)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


async def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run one operator command; the process exit status."""
    try:
        async with contextlib.AsyncExitStack() as stack:
            store = await open_store(settings, stack)
            await _dispatch(args, store)
        return 0
    except (NotFound, Conflict, StoreError, ValueError, OSError) as exc:
        print(f"voxdial: {exc}", file=sys.stderr)
        if isinstance(exc, ops.LaunchRefused):
            for problem in exc.problems:
                print(f"  - {problem.path}: {problem.message}", file=sys.stderr)
        return 1


async def _dispatch(args: argparse.Namespace, store: Store) -> None:
    tenant: str = args.tenant
    if args.command == "apikey":
        if args.action == "create":
            record, secret = await store.create_api_key(tenant, args.name)
            _print({"id": record.id, "tenant": tenant, "key": secret})
        else:
            keys = await store.list_api_keys(tenant)
            _print([k.model_dump(exclude={"key_hash"}) for k in keys])
        return
    if args.command == "leads":
        if str(args.file) == "-":
            stream = sys.stdin.buffer
            report = await ops.import_leads(
                store, tenant, args.campaign, stream, default_region=args.region
            )
        else:
            with args.file.open("rb") as stream:
                report = await ops.import_leads(
                    store, tenant, args.campaign, stream, default_region=args.region
                )
        _print(report.to_dict())
        return

    if args.action == "list":
        page = await store.list_campaigns(tenant, limit=200)
        _print([CampaignView.of(c).model_dump(mode="json") for c in page.items])
        return
    if not args.campaign:
        raise ValueError(f"campaign {args.action} needs a campaign id")
    cid: str = args.campaign
    if args.action == "review":
        problems = await ops.campaign_review(store, tenant, cid)
        _print({"ready": not problems, "problems": [p.to_dict() for p in problems]})
    elif args.action == "overview":
        _print((await ops.overview(store, tenant, cid)).to_dict())
    elif args.action == "pause":
        campaign = await ops.pause(store, tenant, cid)
        _print(CampaignView.of(campaign).model_dump(mode="json"))
    elif args.action == "launch":
        campaign = await ops.launch(store, tenant, cid)
        _print(CampaignView.of(campaign).model_dump(mode="json"))
    else:
        campaign = await store.transition(tenant, cid, args.action)
        _print(CampaignView.of(campaign).model_dump(mode="json"))
