"""``pxp-service``: the service's own commands (the ``service`` extra installs it).

* ``pxp-service serve [--host --port --data-dir --workers --log-level]``: the gateway,
  plus embedded workers when nothing is configured (:mod:`service.embedded`);
* ``pxp-service optuna-url``: the Optuna storage URL, for ``optuna-dashboard "$(pxp-service optuna-url)"``;
* ``pxp-service keys create|revoke|list|webhook-secret``: API keys and webhook secrets, straight against the database
  (:mod:`service.admin`).

The torch-free ``pxp`` command keeps the client commands (``submit``, ``status``,
``download``); it never imports this package.
"""

from __future__ import annotations

import sys

USAGE = """usage: pxp-service {serve,keys,optuna-url} ...

  serve   run the gateway (+ an embedded worker when nothing is configured)
  optuna-url  print the Optuna storage URL of the service's studies (for optuna-dashboard)
  keys    create / revoke / list API keys, show or rotate webhook secrets (admin)
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command == "serve":
        from service import embedded

        embedded.main(rest)
        return 0
    if command == "keys":
        from service import admin

        return admin.main(rest)
    if command == "optuna-url":
        from service.settings import Settings

        print(Settings().optuna_url)
        return 0
    if command in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    print(USAGE, end="", file=sys.stderr)
    if command:
        print(f"pxp-service: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
