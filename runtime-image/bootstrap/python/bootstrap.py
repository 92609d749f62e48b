"""Porchlight's dependency-free Python bootstrap: a Lambda Runtime API client.

It imports the handler once (init), reports import failures to
/runtime/init/error and exits 1, then loops: GET /next, call
handler(event, context), POST /response or /error. Only the standard library
is used, over one persistent HTTP/1.1 connection, and heavy modules
(http.client with ssl and email, traceback, decimal) are avoided or imported
only when needed, so that start-up is fast.

The handler comes from argv[1] if given, else from _HANDLER.

Logging follows Lambda's Python runtime: the root logger gets a handler that
writes `[LEVEL]\t<timestamp>Z\t<request id>\t<message>` to stdout, or one
JSON object a line with AWS_LAMBDA_LOG_FORMAT=JSON; AWS_LAMBDA_LOG_LEVEL sets
the root logger's level. The handler is installed when the function first
imports `logging` (importing it costs about 9 ms of init).
"""

import importlib
import json
import os
import socket
import sys
import time

API_PREFIX = b"/2018-06-01/runtime"

# Lambda's advanced logging controls.
LOG_FORMAT_JSON = os.environ.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON"
LOG_LEVEL = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
LOG_LEVEL = {"TRACE": "DEBUG"}.get(LOG_LEVEL, LOG_LEVEL)

# The request id of the invocation in flight, for log records.
current_request_id = ""

# Fields of a LogRecord that are not a user's `extra` (as awslambdaric).
RESERVED_RECORD_FIELDS = frozenset((
    "name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module",
    "exc_info", "exc_text", "stack_info", "lineno", "funcName", "created", "msecs",
    "relativeCreated", "thread", "threadName", "processName", "process",
    "aws_request_id", "tenant_id", "taskName", "message", "asctime"))


def setup_logging(logging):
    """Puts Lambda's handler on the root logger of the `logging` module."""

    class RequestIdFilter(logging.Filter):
        def filter(self, record):
            record.aws_request_id = current_request_id
            return True

    class JsonFormatter(logging.Formatter):
        def format(self, record):
            # Lambda rounds levels to the standard ones.
            levelno = min(50, max(0, record.levelno)) // 10 * 10
            message = (record.msg if isinstance(record.msg, dict) and not record.args
                       else record.getMessage())
            result = {
                "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%SZ"),
                "level": logging.getLevelName(levelno),
                "message": message,
                "logger": record.name,
                "requestId": record.aws_request_id or None,
            }
            if record.exc_info:
                import traceback
                result["stackTrace"] = traceback.format_tb(record.exc_info[2])
                result["errorType"] = record.exc_info[0].__name__
                result["errorMessage"] = str(record.exc_info[1])
                result["location"] = "%s:%s:%s" % (record.pathname, record.funcName, record.lineno)
            for key, value in record.__dict__.items():
                if key not in RESERVED_RECORD_FIELDS and key not in result:
                    result[key] = value
            return json.dumps({k: v for k, v in result.items() if v is not None},
                              ensure_ascii=False, default=str)

    class StdoutHandler(logging.Handler):
        def emit(self, record):
            try:
                sys.stdout.write(self.format(record) + "\n")
            except Exception:
                self.handleError(record)

    logging.Formatter.converter = time.gmtime
    handler = StdoutHandler()
    if LOG_FORMAT_JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
            "%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    if LOG_LEVEL in logging._nameToLevel:
        root.setLevel(LOG_LEVEL)


class LoggingSetup:
    """An import hook that runs `setup_logging` right after `logging` is
    first imported, so that a function that never logs does not pay for it."""

    def find_spec(self, name, path=None, target=None):
        if name != "logging":
            return None
        sys.meta_path.remove(self)
        import importlib.machinery
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_set_up(module):
            exec_module(module)
            setup_logging(module)

        spec.loader.exec_module = exec_and_set_up
        return spec


def install_logging():
    if "logging" in sys.modules:
        setup_logging(sys.modules["logging"])
    else:
        sys.meta_path.insert(0, LoggingSetup())


def log_error(error_type, message, stack_trace, request_id=""):
    """An error as Lambda's Python runtime logs it: one record, its lines
    joined with a carriage return in text format (one CloudWatch event), or
    one JSON object."""
    if LOG_FORMAT_JSON:
        record = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "level": "ERROR",
            "errorMessage": message,
            "errorType": error_type,
            "requestId": request_id,
            "stackTrace": stack_trace,
        }
        line = json.dumps(record, ensure_ascii=False)
    else:
        lines = ["[ERROR] %s: %s" % (error_type, message)]
        if stack_trace:
            lines.append("Traceback (most recent call last):")
            for frame in stack_trace:
                lines.extend(frame.splitlines())
        line = "\r".join(lines)
    sys.stdout.write(line + "\n")


class Response:
    __slots__ = ("status", "headers")

    def __init__(self, status, headers):
        self.status = status
        self.headers = headers


class RuntimeApi:
    """A minimal HTTP/1.1 client for the Runtime API on one keep-alive socket.

    http.client would pull in ssl and the email package, which costs tens of
    milliseconds of start-up; the Runtime API needs only plain HTTP/1.1.
    """

    def __init__(self, address):
        host, _, port = address.rpartition(":")
        self.address = (host or "127.0.0.1", int(port))
        self.host_header = address.encode("latin-1")
        self.sock = None
        self.reader = None

    def _connect(self):
        self.sock = socket.create_connection(self.address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb", buffering=65536)

    def _close(self):
        if self.sock is not None:
            try:
                self.reader.close()
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.reader = None

    def _exchange(self, method, path, body, headers):
        head = [b"%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: porchlight-python-bootstrap/1\r\n" % (
            method, API_PREFIX, path.encode("latin-1"), self.host_header)]
        for name, value in headers.items():
            head.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        if body is not None:
            head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        data = b"".join(head)
        self.sock.sendall(data + body if body is not None and len(body) < 65536 else data)
        if body is not None and len(body) >= 65536:
            self.sock.sendall(body)
        reader = self.reader
        status_line = reader.readline(65537)
        if not status_line:
            raise ConnectionError("connection closed by the Runtime API")
        status = int(status_line.split(None, 2)[1])
        response_headers = Headers()
        while True:
            line = reader.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            response_headers[name.strip().lower()] = value.strip()
        if response_headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(reader.readline(65537).split(b";", 1)[0], 16)
                if size == 0:
                    while reader.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(reader.read(size))
                reader.readline(65537)
            payload = b"".join(chunks)
        else:
            payload = reader.read(int(response_headers.get("content-length") or 0))
        if response_headers.get("connection", "").lower() == "close":
            self._close()
        return Response(status, response_headers), payload

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            try:
                if self.sock is None:
                    self._connect()
                return self._exchange(method, path, body, headers or {})
            except (OSError, ValueError, IndexError):
                self._close()
                if attempt:
                    raise

    def next(self):
        response, body = self.request(b"GET", "/invocation/next")
        if response.status != 200:
            raise RuntimeError("Failed to get next invocation: HTTP %d" % response.status)
        return response, body

    def post(self, path, body, headers):
        response, _ = self.request(b"POST", path, body, headers)
        return response.status


class Headers(dict):
    """Response headers, looked up case-insensitively."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, data):
        self.cognito_identity_id = data.get("cognitoIdentityId")
        self.cognito_identity_pool_id = data.get("cognitoIdentityPoolId")


class Client:
    __slots__ = ("installation_id", "app_title", "app_version_name",
                 "app_version_code", "app_package_name")

    def __init__(self, data):
        self.installation_id = data.get("installation_id")
        self.app_title = data.get("app_title")
        self.app_version_name = data.get("app_version_name")
        self.app_version_code = data.get("app_version_code")
        self.app_package_name = data.get("app_package_name")


class ClientContext:
    __slots__ = ("custom", "env", "client")

    def __init__(self, data):
        self.custom = data.get("custom")
        self.env = data.get("env")
        client = data.get("client")
        self.client = Client(client) if isinstance(client, dict) else None


class LambdaContext:
    """The `context` argument, with the members awslambdaric's context offers."""

    def __init__(self, request_id, deadline_ms, invoked_function_arn, client_context, identity):
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.tenant_id = None
        self.client_context = ClientContext(client_context) if isinstance(client_context, dict) else None
        self.identity = CognitoIdentity(identity) if isinstance(identity, dict) else None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def log(self, msg):
        sys.stdout.write(str(msg))

    def __repr__(self):
        return ("LambdaContext([aws_request_id=%s,function_name=%s,function_version=%s,"
                "invoked_function_arn=%s,memory_limit_in_mb=%s])" % (
                    self.aws_request_id, self.function_name, self.function_version,
                    self.invoked_function_arn, self.memory_limit_in_mb))


def error_body(error_type, message, stack_trace, request_id=""):
    return json.dumps({
        "errorMessage": message,
        "errorType": error_type,
        "requestId": request_id,
        "stackTrace": stack_trace,
    }).encode()


def stack_of(exc):
    """The traceback without the bootstrap's own frames."""
    import traceback
    own = {"<string>", globals().get("__file__")}
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename not in own]
    return traceback.format_list(frames)


class InitError(Exception):
    def __init__(self, error_type, message, stack_trace=()):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.stack_trace = list(stack_trace)


def load_handler(handler):
    try:
        module_name, function_name = handler.rsplit(".", 1)
    except ValueError as e:
        raise InitError("Runtime.MalformedHandlerName", "Bad handler '%s': %s" % (handler, e))
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InitError("Runtime.ImportModuleError",
                        "Unable to import module '%s': %s" % (module_name, e))
    except SyntaxError as e:
        # The user's line, as awslambdaric reports it, not the import
        # machinery's frames.
        raise InitError("Runtime.UserCodeSyntaxError",
                        "Syntax error in module '%s': %s" % (module_name, e),
                        ['  File "%s" Line %s\n    %s\n' % (e.filename, e.lineno,
                                                            (e.text or "").strip())])
    except Exception as e:
        raise InitError(type(e).__name__, str(e), stack_of(e))
    function = getattr(module, function_name, None)
    if function is None:
        raise InitError("Runtime.HandlerNotFound",
                        "Handler '%s' missing on module '%s'" % (function_name, module_name))
    return function


def json_default(value):
    import decimal
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def main():
    api = RuntimeApi(os.environ["AWS_LAMBDA_RUNTIME_API"])
    handler_name = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("_HANDLER", "")
    task_root = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
    if task_root not in sys.path:
        sys.path.insert(0, task_root)

    install_logging()
    try:
        handler = load_handler(handler_name)
    except InitError as e:
        log_error(e.error_type, e.message, e.stack_trace)
        api.post("/init/error", error_body(e.error_type, e.message, e.stack_trace),
                 {"Lambda-Runtime-Function-Error-Type": e.error_type,
                  "Content-Type": "application/json"})
        sys.exit(1)

    global current_request_id
    while True:
        response, event_bytes = api.next()
        headers = response.headers
        request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
        current_request_id = request_id
        trace_id = headers.get("Lambda-Runtime-Trace-Id")
        if trace_id:
            os.environ["_X_AMZN_TRACE_ID"] = trace_id
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        try:
            client_context = headers.get("Lambda-Runtime-Client-Context")
            identity = headers.get("Lambda-Runtime-Cognito-Identity")
            context = LambdaContext(
                request_id,
                int(headers.get("Lambda-Runtime-Deadline-Ms") or 0),
                headers.get("Lambda-Runtime-Invoked-Function-Arn"),
                json.loads(client_context) if client_context else None,
                json.loads(identity) if identity else None,
            )
            content_type = headers.get("Content-Type", "")
            event = json.loads(event_bytes) if content_type.startswith("application/json") else event_bytes
            result = handler(event, context)
            if isinstance(result, (bytes, bytearray)):
                body, result_type = bytes(result), "application/unknown"
            else:
                try:
                    body = json.dumps(result, default=json_default).encode()
                except (TypeError, ValueError) as e:
                    raise InitError("Runtime.MarshalError",
                                    "Unable to marshal response: %s" % e)
                result_type = "application/json"
        except InitError as e:
            log_error(e.error_type, e.message, e.stack_trace, request_id)
            api.post("/invocation/%s/error" % request_id,
                     error_body(e.error_type, e.message, e.stack_trace, request_id),
                     {"Content-Type": "application/json",
                      "Lambda-Runtime-Function-Error-Type": e.error_type})
            continue
        except Exception as e:
            error_type = type(e).__name__
            stack_trace = stack_of(e)
            log_error(error_type, str(e), stack_trace, request_id)
            api.post("/invocation/%s/error" % request_id,
                     error_body(error_type, str(e), stack_trace, request_id),
                     {"Content-Type": "application/json"})
            continue
        api.post("/invocation/%s/response" % request_id, body, {"Content-Type": result_type})


if __name__ == "__main__":
    main()
