"""`maskfleet-keys`: issue, list, revoke and hash API keys in a keys file.

    maskfleet-keys create --file keys.json --id web --scopes infer,feedback
        adds an entry and prints the new key once (stdout); the file keeps only its digest
    maskfleet-keys list --file keys.json          ids and scopes, never digests
    maskfleet-keys revoke --file keys.json --id web
    maskfleet-keys hash < key.txt                 the digest of a key you generated yourself

Rotation is create-new, roll out, move callers, revoke-old: several keys may be valid at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.errors import ConfigError

from .keys import SCOPES, ApiKey, KeyFile, Scope, hash_key, new_key


def _scopes(text: str) -> frozenset[Scope]:
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    unknown = chosen - set(SCOPES)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"scopes are a comma-separated subset of {', '.join(SCOPES)}")
    return frozenset(s for s in SCOPES if s in chosen)


def _load(path: Path) -> KeyFile:
    return KeyFile.read(path) if path.exists() else KeyFile()


def create(path: Path, key_id: str, scopes: frozenset[Scope]) -> str:
    """Add a key to the file (created if missing) and return its plaintext."""
    current = _load(path)
    if any(k.id == key_id for k in current.keys):
        raise ConfigError(f"a key with id {key_id!r} already exists; revoke it first or "
                          "choose another id (e.g. web-2 while rotating)")
    key = new_key()
    entry = ApiKey(id=key_id, sha256=hash_key(key), scopes=scopes)
    KeyFile(keys=[*current.keys, entry]).write(path)
    return key


def revoke(path: Path, key_id: str) -> None:
    current = _load(path)
    kept = [k for k in current.keys if k.id != key_id]
    if len(kept) == len(current.keys):
        raise ConfigError(f"no key with id {key_id!r} in {path}")
    KeyFile(keys=kept).write(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskfleet-keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("create", help="add a key and print it once")
    add.add_argument("--file", type=Path, required=True)
    add.add_argument("--id", required=True, help="name logged with each request (not secret)")
    add.add_argument("--scopes", type=_scopes, required=True,
                     help=f"comma-separated subset of {','.join(SCOPES)}")
    show = commands.add_parser("list", help="ids and scopes of the keys in a file")
    show.add_argument("--file", type=Path, required=True)
    drop = commands.add_parser("revoke", help="remove a key from a file")
    drop.add_argument("--file", type=Path, required=True)
    drop.add_argument("--id", required=True)
    commands.add_parser("hash", help="print the SHA-256 digest of the key read from stdin")
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            ApiKey(id=args.id, sha256="0" * 64, scopes=args.scopes)  # validates the id early
            print(create(args.file, args.id, args.scopes))
        elif args.command == "list":
            for entry in _load(args.file).keys:
                print(json.dumps({"id": entry.id, "scopes": sorted(entry.scopes)}))
        elif args.command == "revoke":
            revoke(args.file, args.id)
        else:
            text = sys.stdin.readline().strip()
            if not text:
                raise ConfigError("no key on stdin")
            print(hash_key(text))
    except ConfigError as exc:
        print(f"maskfleet-keys: {exc.detail}", file=sys.stderr)
        return 2
    except ValueError as exc:  # pydantic: an id that breaks the pattern
        print(f"maskfleet-keys: invalid --id: {str(exc).splitlines()[-1].strip()}",
              file=sys.stderr)
        return 2
    return 0
