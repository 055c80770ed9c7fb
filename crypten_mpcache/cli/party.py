"""``crypten-mpcache party``: one role of a private generation, one process per role.

Start the roles (on one host or several) with the same ``--rendezvous tcp://HOST:PORT``
(the model owner's host) and the same public options; the owner hosts the rendezvous.
Exit status: 0 done; 2 bad input or a public parameter that differs between the roles
(one line naming the field and both values); 1 a role was lost or a step failed or timed
out (one line naming the lost role). Native log lines of torch.distributed go to
``--native-log`` (default: discarded; ``--debug`` keeps them on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crypten_mpcache.cli.common import (
    budget,
    check_writable,
    comma_list,
    error_line,
    positive_int,
)
from crypten_mpcache.runtime.launcher import COMPARISONS, DEALERS, LaunchConfig
from crypten_mpcache.runtime.offline import DEALINGS
from crypten_mpcache.runtime.roles import ROLES

NAME = "party"
HELP = "run one role (owner, client, helper, dealer) of a private generation"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _token_id(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"token ids are >= 0, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The party command's options."""
    p.description = ("One role of a private generation. The owner (party 0) holds the "
                     "weights and hosts the rendezvous; the client (party 1) holds the "
                     "prompt and alone learns the tokens; a helper (party 2 of 3) and the "
                     "dealer hold nothing. Every role gets the same --rendezvous, "
                     "--parties, --dealer, --comparison, --dcf-max-elements and --dealing.")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--rendezvous", required=True, metavar="tcp://HOST:PORT",
                   help="the owner's address and port (the owner listens there)")
    p.add_argument("--parties", type=int, default=2, help="2 or 3 computing parties")
    p.add_argument("--dealer", default="ttp", choices=DEALERS,
                   help="ttp: a dealer role (secure); tfp: party 0 deals (tests only)")
    p.add_argument("--comparison", default="hybrid", choices=COMPARISONS)
    p.add_argument("--dcf-max-elements", type=int, default=LaunchConfig.dcf_max_elements,
                   help="hybrid only: comparison calls of at most this many elements take "
                   f"DCF keys (default {LaunchConfig.dcf_max_elements}); every computing "
                   "role must give the same")
    p.add_argument("--dealing", default="ahead", choices=DEALINGS,
                   help="ttp only: ahead (each phase's material is dealt before the phase; "
                   "default) or on-demand (each piece fetched when needed)")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="owner: the checkpoint folder (the only role that reads weights); "
                   "client: a folder with the same config.json and the tokenizer (weights "
                   "there are never read). Default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--prompt", default=None, help="client: the prompt (default: a short "
                   "built-in question)")
    p.add_argument("--prompt-ids", type=comma_list(_token_id), default=None,
                   metavar="ID,ID,...", help="client: the prompt as token ids")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="client: tokens to generate (default 16); owner/helper: a pin")
    p.add_argument("--cache", default=None, metavar="CACHE",
                   help="client: the KV cache, as in generate (default full); "
                   "owner/helper: a pin")
    p.add_argument("--budget", type=budget, default=None,
                   help="client: the evicting cache's budget, as in generate; "
                   "owner/helper: a pin")
    p.add_argument("--no-premask", action="store_true")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="client: write the result as JSON (the fields of generate)")
    p.add_argument("--quiet", action="store_true", help="client: no progress bar")
    p.add_argument("--timeout", type=_seconds, default=120.0, metavar="S",
                   help="seconds to reach the rendezvous and for every role to join "
                   "(default 120)")
    p.add_argument("--step-timeout", type=_seconds, default=600.0, metavar="S",
                   help="the longest wait for any one communication (default 600)")
    p.add_argument("--liveness", type=_seconds, default=10.0, metavar="S",
                   help="a role silent this long is declared lost (default 10)")
    p.add_argument("--link-is-protected", action="store_true",
                   help="required off loopback: the links run over a VPN or tunnel "
                   "(torch.distributed does not encrypt)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--native-log", default=None, metavar="PATH",
                   help="append torch.distributed's native log lines here")


@contextmanager
def _native_stderr(path: str | None, keep: bool) -> Iterator[None]:
    """Native (C++) log lines go to ``path`` (or nowhere); Python's stderr stays."""
    if keep:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(target, 2)
    os.close(target)
    python_stderr = sys.stderr
    if _writes_to_fd2(python_stderr):  # else (a test's capture) leave Python's stderr be
        sys.stderr = os.fdopen(saved, "w", buffering=1, closefd=False)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = python_stderr


def _writes_to_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _progress_bar_open() -> bool:
    """A progress bar is on the terminal's last line (the error goes on a new one)."""
    from tqdm import tqdm

    return bool(getattr(tqdm, "_instances", None))


def run(args: argparse.Namespace) -> int:
    """Run the role; the client prints the text and the cost table."""
    # Late: the roles load transformers and CrypTen (seconds), which --help does not need.
    from crypten_mpcache.deployment import PartyRequest, run_role
    from crypten_mpcache.runtime.rendezvous import RendezvousError
    from crypten_mpcache.runtime.roles import RoleOptions

    if args.role != "client" and (args.json or args.quiet):
        raise ValueError("--json and --quiet are the client's options")
    check_writable(args.json, args.native_log)
    options = RoleOptions(
        role=args.role, rendezvous=args.rendezvous, parties=args.parties, dealer=args.dealer,
        comparison=args.comparison, dcf_max_elements=args.dcf_max_elements,
        dealing=args.dealing, timeout_s=args.timeout,
        step_timeout_s=args.step_timeout,
        liveness_s=args.liveness, link_is_protected=args.link_is_protected,
        threads=args.threads)
    request = PartyRequest(
        options=options, model_path=args.model, prompt=args.prompt,
        prompt_ids=args.prompt_ids, chat_template=not args.no_chat_template,
        max_new_tokens=args.max_new_tokens, cache=args.cache, budget=args.budget,
        premask=not args.no_premask, progress=not args.quiet)

    def announce(line: str) -> None:
        lead = "\n" if _progress_bar_open() else ""
        print(lead + error_line(args.prog, RuntimeError(line)), file=sys.stderr, flush=True)

    with _native_stderr(args.native_log, keep=args.debug):
        try:
            outcome = run_role(request, announce)
        except RendezvousError as error:
            if args.debug:
                raise
            announce(str(error))
            return error.code
    agreed = outcome.agreed
    summary = (f"prompt tokens: {agreed['prompt_tokens']}   parties: {agreed['parties']}   "
               f"dealer: {agreed['dealer']}   cache: {agreed['cache']}")
    if outcome.result is None:
        print(f"{args.role}: the session ended well ({summary}; "
              f"{agreed['max_new_tokens']} tokens went to the client only)")
        return 0
    _print_client(outcome.result, summary, agreed, args.json)
    return 0


def _print_client(result, summary: str, agreed: dict, json_path: str | None) -> None:  # noqa: ANN001
    from crypten_mpcache.runtime.report import format_cost

    print(f"{summary}   comparison: {agreed['comparison']}")
    if result.text is not None:
        print(f"generated: {result.text!r}")
    print(f"generated ids: {result.generated_ids}")
    print()
    print(format_cost(result.cost))
    if json_path is not None:
        Path(json_path).write_text(result.to_json())
        print(f"\nwrote {json_path}")
