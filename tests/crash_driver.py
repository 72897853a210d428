"""A worker in a child process: runs pipeline steps so a test can kill it with SIGKILL.

``python -m tests.crash_driver --run-id R --window-end ISO --steps a,b,c [--kill-after b]``
reads the configuration and state store from the environment (as a worker does) and the sandbox
and SMTP sink addresses from its arguments. ``--kill-after`` sends SIGKILL to itself right after
that step returns: a worker dying at a step boundary, with nothing cleaned up.
"""

from __future__ import annotations

import argparse
import os
import signal
from datetime import datetime
from functools import partial


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--window-end", required=True, type=datetime.fromisoformat)
    parser.add_argument("--steps", required=True)
    parser.add_argument("--kill-after")
    parser.add_argument("--salesforce-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--smtp-host", required=True)
    parser.add_argument("--smtp-port", required=True, type=int)
    args = parser.parse_args()

    from simple_salesforce import Salesforce

    from handoff.config import load_settings
    from handoff.crm.http import build_session
    from handoff.crm.salesforce import SalesforceCRM
    from handoff.mail import smtp_transport
    from handoff.pipeline import steps_in_order
    from handoff.state import StateStore

    settings = load_settings()
    store = StateStore(settings.state.url)
    store.check_schema()  # what the DAG's preflight task does
    client = Salesforce(
        instance_url=args.salesforce_url,
        session_id=args.token,
        session=build_session(args.salesforce_url),
    )
    crm = SalesforceCRM.from_settings(client, settings)
    transport = partial(smtp_transport, args.smtp_host, args.smtp_port, timeout=30)
    steps = steps_in_order(crm, store, settings, transport, args.run_id, args.window_end)
    for name in args.steps.split(","):
        steps[name]()
        print(f"step {name} done", flush=True)
        if name == args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
