"""One exception hierarchy for the core. Every message says what to do next."""

from __future__ import annotations

import re

# What a message never shows of a value: a URL's user and password, and anything filed under a
# credential's name. A bad value can be a whole section (a misspelt one, a mapping where a string
# belongs), and those messages reach Airflow's import errors, task logs and the audit log.
# to the last '@' of one URL (a list's URLs end at ',' or ';'): AWS secret keys hold '/'s
_URL_USER = re.compile(r"(?<=://)([^\s'\",;]*)@")
# a URL parameter (in the query, or the fragment where OAuth puts access_token) whose name ends
# in a credential's word, as a whole segment: a presigned URL's X-Amz-Signature, X-Amz-Credential
# and X-Amz-Security-Token, token, sig, api_key, pwd. Its value is masked wherever the URL appears;
# max-keys, author or design are not credentials and stay.
_URL_PARAM = re.compile(r"([?&#;])([^=&#;\s'\"]+)=([^&#;\s'\"]*)")
_SECRET_PARAM = re.compile(r"(^|[-_.])(signature|sig|token|secret|password|passwd|pwd|credential|credentials|key"
                           r"|apikey|auth|authorization)$", re.IGNORECASE)
_SECRET_NAME = re.compile(r"secret|password|passwd|credential|apikey|api_key|private_key|access_key"
                          r"|account_key|session_token|_token$|^token$", re.IGNORECASE)


# Environment variables that hold credentials, whatever environment they are for: Horovod's ranks
# (training/launcher.py) and the ones Spark settings give its driver and executors
# (dlpipe/spark_submit.py), both through dlpipe.proc.secret_env.
SECRET_ENV = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|FERNET|_KEY$|_KEYS$|APIKEY|CREDENTIAL|_DSN$|DATABASE_URL"
                        r"|CONNECTION_STRING|_PASS$|PASSPHRASE|_PW$|_PWD$|_PAT$|_AUTH$|AUTH_CONFIG|JAAS|WEBHOOK"
                        r"|PRIVATE|_SAS_|SAS_TOKEN|_CREDS$|_JWT$", re.IGNORECASE)
# Names of that kind that hold where a credential is, not the credential: a file (the way to give
# ranks credentials), ssh-agent's socket (horovodrun's own ssh to other hosts), a task role's address.
LOCATOR_ENV = re.compile(r"(_FILE|_PATH|_SOCK|_DIR)$|^GOOGLE_APPLICATION_CREDENTIALS$"
                         r"|^AWS_CONTAINER_CREDENTIALS_(RELATIVE|FULL)_URI$", re.IGNORECASE)
LOCATION = re.compile(r"^(/|\./|~|https?://)[^\n{]*$")  # a path or an address, not a key pasted in
URL_WITH_PASSWORD = re.compile(r"://[^/\s@,;]*:[^/\s@,;]*@")  # user:password@ with no '/' in either
_TOKEN_USER_CHARS = 16  # a URL's user this long, with no password, is taken for a token (https://ghp_...@host)


def _login(before: str) -> str | None:
    """The login in ``before`` (the text between '://' and the last '@'), or None where the '@'
    is in a path (``s3://bucket/eta@3``): a login ends before the first '/', unless a ':' (its
    password's start, not a port's) comes first, since passwords and AWS secret keys hold '/'s."""
    slash, colon = before.find("/"), before.find(":")
    if slash == -1:
        return before
    if 0 <= colon < slash and not before[colon + 1:slash].isdigit():  # host:8080/path@x is a port, a path
        return before
    return None


def url_login(value: str) -> bool:
    """Whether ``value`` holds a URL with a password (``https://u:p/w@h``, also inside another
    URL: ``k8s://https://u:p@api``) or a token for its user (``https://ghp_x...@github.com``).
    A short user alone (``ssh://git@github.com``) is a name, not a credential."""
    for match in _URL_USER.finditer(value):
        login = _login(match.group(1))
        if login is None:
            continue
        user, password_follows, _ = login.rpartition("://")[2].partition(":")
        if password_follows or len(user) >= _TOKEN_USER_CHARS:
            return True
    return False


CREDENTIAL_WORDS = r"secret|password|passwd|passphrase|token|credential"
# A credential passed inside a value: JVM options (-Djavax.net.ssl.keyStorePassword=...,
# -Dfs.s3a.secret.key=...), JDBC URLs (...?user=hive&password=..., Oracle's scott/tiger@host)
# and HTTP bearer tokens.
SECRET_IN_VALUE = re.compile(rf"({CREDENTIAL_WORDS})[\w.-]*=|[?&;](pwd|pass)=|\bbearer\s"
                             r"|jdbc:oracle:\w+:[^/\s@]+/[^\s@]+@", re.IGNORECASE)


def credential_value(value: str) -> bool:
    """A value that is a credential whatever it is filed under: a URL with a login, a PEM private
    key, a setting or URL parameter named like a credential with a value (``password=``,
    ``X-Amz-Signature=``), a bearer token. One rule for Spark's settings and every environment
    dlpipe passes on (horovodrun shows the ranks' on a command line)."""
    if url_login(value) or URL_WITH_PASSWORD.search(value) or "PRIVATE KEY-----" in value:
        return True
    if SECRET_IN_VALUE.search(value):
        return True
    return any(v and _SECRET_PARAM.search(n) for _, n, v in _URL_PARAM.findall(value))


def credential_env(name: str, value: str) -> bool:
    """Whether the environment variable ``name=value`` holds a credential: by its value, or by
    its name unless the name says where one is and the value is a path or address."""
    if credential_value(value):
        return True
    located = LOCATOR_ENV.search(name) and LOCATION.match(value) and "-----BEGIN" not in value
    return bool(SECRET_ENV.search(name)) and not located


def _hide_login(match: re.Match) -> str:
    """``user:password@`` becomes ``***@``; an '@' in a path (``s3://bucket/eta@3/m.pt``) stays."""
    return "***@" if _login(match.group(1)) is not None else match.group(0)


def _hide_param(match: re.Match) -> str:
    """``token=abc`` becomes ``token=***``; a parameter not named like a credential stays."""
    start, name, value = match.groups()
    return f"{start}{name}=***" if value and _SECRET_PARAM.search(name) else match.group(0)


def _hidden_under(name: object, value: object) -> bool:
    """Whether ``value``, filed under ``name``, is hidden: a string or a number (YAML reads a
    numeric key as one) under a credential's name. A mapping or list under such a name is looked
    into instead, and a switch (true/false) says nothing."""
    return (isinstance(value, (str, bytes, int, float)) and not isinstance(value, bool)
            and bool(_SECRET_NAME.search(str(name))))


def redacted(value: object) -> object:
    """``value`` fit for an error message: URL logins, and values filed under a credential's
    name, masked (mappings and lists under such a name are looked into, not hidden), and a PEM
    private key whatever it is filed under."""
    if isinstance(value, str):
        if "PRIVATE KEY-----" in value:
            return "***"
        return _URL_PARAM.sub(_hide_param, _URL_USER.sub(_hide_login, value))
    if isinstance(value, dict):
        return {k: "***" if _hidden_under(k, v) else redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


def _last_name(field: str) -> str:
    """The last name of a field path: ``p.yaml: registry.aws_secret_access_key`` gives
    ``aws_secret_access_key`` (the file's name, before ': ', never counts)."""
    return field.rsplit(": ", 1)[-1].rsplit(".", 1)[-1]


def shown_value(field: str, value: object) -> object:
    """``value`` of ``field`` as an error message may show it: '***' when the field itself is
    named like a credential (a key misplaced in a section, or at the top level of a YAML),
    else ``redacted``."""
    return "***" if _hidden_under(_last_name(field), value) else redacted(value)


class DlpipeError(Exception):
    """Base class of every error raised by dlpipe."""


class ConfigError(DlpipeError, ValueError):
    """A configuration value is invalid. Deterministic: retrying will not help."""

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field, self.value, self.fix = field, shown_value(field, value), fix
        super().__init__(f"invalid {field}={shown_repr(self.value)}: {fix}")


SHOWN_CHARS = 400  # of a value in a message: a whole misplaced section reads; a pasted file does not


def shown_repr(value: object) -> str:
    """``repr(value)``, cut after SHOWN_CHARS with the length it had: messages reach Airflow's
    import errors, task logs and the audit log, where a pasted blob would bury the fix."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({len(text):,} characters)"


class FieldValueError(ValueError):
    """Raised inside a pydantic validator to name the field at fault. A check across fields (a
    model validator) otherwise reaches the user with no field, only the whole section. A field
    validator gives field "" to name its own field while showing ``value`` instead of the input."""

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field, self.value, self.fix = field, value, fix
        super().__init__(fix)


# the name patterns of dlpipe's settings, in words (pydantic shows only the regular expression)
PATTERN_WORDS = {
    r"^[a-z0-9][a-z0-9_\-]{0,62}$": "a lower-case letter or digit, then up to 62 lower-case letters, digits, '_' or '-'",
    r"^[a-z][a-z0-9_-]{0,31}$": "a lower-case letter, then up to 31 lower-case letters, digits, '_' or '-'",
    r"^[A-Za-z0-9_.\-]{1,200}$": "1 to 200 letters, digits, '_', '.' or '-'",
}


def validation_message(err: dict) -> tuple[tuple, object, str]:
    """(location, value, message) of one pydantic error, as a user should read it: the field a
    FieldValueError names, a validator's own words without pydantic's "Value error, ", and a
    name pattern in words."""
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldValueError):  # field "": the validated field itself, another value shown
        return (*err["loc"], *filter(None, [cause.field])), cause.value, cause.fix
    if isinstance(cause, ValueError):
        return tuple(err["loc"]), err.get("input"), str(cause)
    pattern = (err.get("ctx") or {}).get("pattern") if err.get("type") == "string_pattern_mismatch" else None
    words = PATTERN_WORDS.get(pattern)
    return tuple(err["loc"]), err.get("input"), f"{err['msg']}: {words}" if words else err["msg"]


class NotCommittedError(DlpipeError):
    """A reader was pointed at data that no committed manifest vouches for."""


class InputNotReady(NotCommittedError):
    """An input that may still come is not committed yet: the interval's own raw data (late
    ingestion), or a day another spec's feature set has not reached. Unlike the other
    NotCommittedErrors, operators let Airflow retry it."""


class IntegrityError(DlpipeError):
    """Stored bytes do not match the SHA-256 recorded when they were committed."""


class NewerFormatError(DlpipeError):
    """A manifest written by a newer dlpipe than this one (a rollback, a worker not yet
    upgraded): refused, not read as if its fields meant what they meant before."""


class CommitConflict(DlpipeError):
    """Another attempt committed the same thing first (lost a create-only race)."""


class GateFailed(DlpipeError):
    """A data or model gate rejected its input. Deterministic: do not retry."""

    def __init__(self, gate: str, failures: list[str], next_steps: str = "") -> None:
        self.gate, self.failures = gate, failures
        lines = "\n".join(f"  - {f}" for f in failures)
        super().__init__(f"{gate} failed ({len(failures)} check(s)):\n{lines}" + (f"\n{next_steps}" if next_steps else ""))


class SubprocessFailed(DlpipeError):
    """An external tool (spark-submit, horovodrun) exited non-zero; carries its output tail."""

    def __init__(self, message: str, *, headline: str = "", tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.headline = headline or message.splitlines()[0]
        self.tail = tail or []


class AliasConflict(CommitConflict):
    """An alias moved between reading it and writing it (lost a compare-and-swap)."""


class UnsafeArtifactError(IntegrityError):
    """An artifact would need pickle (arbitrary code execution) to load; it is refused."""
