"""Executable simulated APIs for multi-turn tool calling, scored by their end state as BFCL's multi-turn
checker scores its own (``GorillaFileSystem``, ``TradingBot`` ...).

Each environment is a class whose ``TOOLS`` table gives every callable method's description and JSON
schema; ``tools()`` turns it into OpenAI function tools, ``call`` runs one call (a bad one returns an
``{"error": ...}`` result, as a real API would, rather than raising), and ``state()`` is the JSON
snapshot the checker compares. A task sample names its environments and their starting state in
``initial_config`` (``{"FileSystem": {...}, "Bank": {...}}``).
"""

from __future__ import annotations

import copy
import json


def _params(**props: tuple[str, str]) -> dict:
    """``name=(type, description)``; a type ending in ``?`` is optional."""
    return {"type": "object",
            "properties": {k: {"type": t.rstrip("?"), "description": d} for k, (t, d) in props.items()},
            "required": [k for k, (t, _) in props.items() if not t.endswith("?")]}


class Environment:
    TOOLS: dict[str, tuple[str, dict]] = {}

    def tools(self) -> list[dict]:
        return [{"type": "function", "function": {"name": n, "description": d, "parameters": p}}
                for n, (d, p) in self.TOOLS.items()]

    def call(self, name: str, args: dict):
        if name not in self.TOOLS:
            return {"error": f"no function {name!r}"}
        schema = self.TOOLS[name][1]
        missing = [p for p in schema["required"] if p not in args]
        extra = [p for p in args if p not in schema["properties"]]
        if missing or extra:
            return {"error": f"{name}: " + "; ".join(
                ([f"missing argument(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown argument(s) {', '.join(extra)}"] if extra else []))}
        try:
            return getattr(self, name)(**args)
        except (TypeError, ValueError, KeyError) as e:
            return {"error": f"{name}: {e}"}

    def state(self) -> dict:
        return copy.deepcopy({k: v for k, v in vars(self).items() if not k.startswith("_")})


class FileSystem(Environment):
    """A directory tree with a current directory, after BFCL's ``GorillaFileSystem``: ``root`` maps names
    to a dict (a folder) or a string (a file's content); ``cwd`` is the path of folder names to start in."""

    TOOLS = {
        "pwd": ("Print the current directory's path.", _params()),
        "ls": ("List the current directory's entries.", _params()),
        "cd": ("Change into a folder of the current directory, or '..' for the parent.",
               _params(folder=("string", "folder name or '..'"))),
        "mkdir": ("Create a folder in the current directory.", _params(dir_name=("string", "new folder's name"))),
        "touch": ("Create an empty file in the current directory.", _params(file_name=("string", "new file's name"))),
        "echo": ("Write text into a file of the current directory (created if absent, replaced if present).",
                 _params(content=("string", "the text"), file_name=("string", "file to write"))),
        "cat": ("Read a file of the current directory.", _params(file_name=("string", "file to read"))),
        "mv": ("Rename a file or folder of the current directory, or move it into a folder there.",
               _params(source=("string", "entry to move"), destination=("string", "new name or folder"))),
        "rm": ("Delete a file or folder of the current directory.", _params(file_name=("string", "entry to delete"))),
    }

    def __init__(self, root: dict | None = None, cwd: list[str] | None = None):
        self.root = copy.deepcopy(root or {})
        self._cwd = list(cwd or [])  # private, as in BFCL: where the model stands is not end state

    def _here(self) -> dict:
        node = self.root
        for part in self._cwd:
            node = node[part]
        return node

    def pwd(self):
        return {"current_working_directory": "/" + "/".join(self._cwd)}

    def ls(self):
        return {"entries": sorted(self._here())}

    def cd(self, folder: str):
        if folder == "..":
            if not self._cwd:
                return {"error": "cd: already at the root"}
            self._cwd.pop()
        elif isinstance(self._here().get(folder), dict):
            self._cwd.append(folder)
        else:
            return {"error": f"cd: no folder {folder!r} here"}
        return {"current_working_directory": "/" + "/".join(self._cwd)}

    def mkdir(self, dir_name: str):
        here = self._here()
        if dir_name in here:
            return {"error": f"mkdir: {dir_name!r} exists"}
        here[dir_name] = {}
        return None

    def touch(self, file_name: str):
        here = self._here()
        if isinstance(here.get(file_name), dict):
            return {"error": f"touch: {file_name!r} is a folder"}
        here.setdefault(file_name, "")
        return None

    def echo(self, content: str, file_name: str):
        here = self._here()
        if isinstance(here.get(file_name), dict):
            return {"error": f"echo: {file_name!r} is a folder"}
        here[file_name] = str(content)
        return None

    def cat(self, file_name: str):
        value = self._here().get(file_name)
        if not isinstance(value, str):
            return {"error": f"cat: no file {file_name!r} here"}
        return {"file_content": value}

    def mv(self, source: str, destination: str):
        here = self._here()
        if source not in here:
            return {"error": f"mv: no {source!r} here"}
        if isinstance(here.get(destination), dict):
            if source in here[destination]:
                return {"error": f"mv: {destination}/{source} exists"}
            here[destination][source] = here.pop(source)
        elif destination in here:
            return {"error": f"mv: {destination!r} exists"}
        else:
            here[destination] = here.pop(source)
        return {"result": f"moved {source} to {destination}"}

    def rm(self, file_name: str):
        if self._here().pop(file_name, None) is None:
            return {"error": f"rm: no {file_name!r} here"}
        return {"result": f"removed {file_name}"}


class Bank(Environment):
    """Accounts with balances and a list of payments made."""

    TOOLS = {
        "list_accounts": ("Names of the user's accounts.", _params()),
        "get_balance": ("An account's balance.", _params(account=("string", "account name"))),
        "transfer": ("Move money between two of the user's accounts.",
                     _params(from_account=("string", "account to take it from"),
                             to_account=("string", "account to put it in"), amount=("number", "how much"))),
        "pay": ("Pay someone from an account.",
                _params(account=("string", "account to pay from"), payee=("string", "who is paid"),
                        amount=("number", "how much"))),
    }

    def __init__(self, accounts: dict | None = None, payments: list | None = None):
        self.accounts = {k: float(v) for k, v in (accounts or {}).items()}
        self.payments = list(payments or [])

    def _take(self, account: str, amount) -> None:
        if account not in self.accounts:
            raise KeyError(f"no account {account!r}")
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount <= 0:
            raise ValueError(f"amount must be a positive number, got {amount!r}")
        if self.accounts[account] < amount:
            raise ValueError(f"{account} holds {self.accounts[account]:.2f}, less than {amount}")
        self.accounts[account] = round(self.accounts[account] - amount, 2)

    def list_accounts(self):
        return {"accounts": sorted(self.accounts)}

    def get_balance(self, account: str):
        if account not in self.accounts:
            return {"error": f"get_balance: no account {account!r}"}
        return {"account": account, "balance": self.accounts[account]}

    def transfer(self, from_account: str, to_account: str, amount):
        if to_account not in self.accounts:
            return {"error": f"transfer: no account {to_account!r}"}
        self._take(from_account, amount)
        self.accounts[to_account] = round(self.accounts[to_account] + amount, 2)
        return {"from_balance": self.accounts[from_account], "to_balance": self.accounts[to_account]}

    def pay(self, account: str, payee: str, amount):
        self._take(account, amount)
        self.payments.append({"account": account, "payee": payee, "amount": float(amount)})
        return {"balance": self.accounts[account]}


ENVIRONMENTS = {cls.__name__: cls for cls in (FileSystem, Bank)}


def build(initial_config: dict, source: str = "task") -> dict[str, Environment]:
    """One instance per named environment, from its starting state."""
    envs = {}
    for name, state in initial_config.items():
        if name not in ENVIRONMENTS:
            raise ValueError(f"{source}: unknown environment {name!r} in 'initial_config' "
                             f"(known: {', '.join(ENVIRONMENTS)})")
        envs[name] = ENVIRONMENTS[name](**(state or {}))
    return envs


def dispatch(envs: dict[str, Environment], name: str, args: dict):
    """Run a call on whichever environment has the function; its result as JSON-able data."""
    for env in envs.values():
        if name in env.TOOLS:
            result = env.call(name, args if isinstance(args, dict) else {})
            return json.loads(json.dumps(result, default=str))
    return {"error": f"no function {name!r}"}
