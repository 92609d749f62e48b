/*
 * Porchlight's dependency-free Node.js bootstrap: a Lambda Runtime API client.
 *
 * It loads the handler once (init), reports load failures to
 * /runtime/init/error and exits, then loops: GET /next, call
 * handler(event, context, callback), POST /response or /error. Only Node's
 * own modules are used, over one keep-alive HTTP/1.1 connection (an agent
 * with a single socket), as Lambda's Node.js runtime interface client does.
 *
 * The handler comes from argv (the first argument after the script) if
 * given, else from _HANDLER: `index.handler`, `src/app.handler`, or
 * `app.nested.handler` (a property path in the module). The module is
 * loaded from LAMBDA_TASK_ROOT (default: the working directory) in Lambda's
 * order: an extensionless file or `<module>.js` with require(), then
 * `<module>.js` as an ES module when the nearest package.json says
 * "type": "module", then `<module>.mjs` with import(), then
 * `<module>.cjs` with require(), then Node's own resolution.
 *
 * Completion follows Lambda's rules: a returned promise settles the
 * invocation; callback(err, result) does too, but with
 * context.callbackWaitsForEmptyEventLoop (default true) the result is only
 * posted once the event loop is empty (Node's 'beforeExit' event). The
 * agent's idle socket is unreferenced by Node, so it does not count.
 *
 * console.* writes `<ISO time>\t<request id>\t<LEVEL>\t<message>` lines to
 * stdout (util.format, newlines replaced by `\r` so a record stays one
 * line), or one JSON object a line with AWS_LAMBDA_LOG_FORMAT=JSON;
 * AWS_LAMBDA_LOG_LEVEL drops the lower levels.
 */

'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');
const util = require('util');
const { pathToFileURL } = require('url');

const API_PREFIX = '/2018-06-01/runtime';
const ERROR_TYPE_HEADER = 'Lambda-Runtime-Function-Error-Type';

// The request id of the invocation in flight, for log lines (`undefined`
// during init, as Lambda prints it).
let currentRequestId;

// ---------------------------------------------------------------------------
// Errors in Lambda's shape.

class RuntimeError extends Error {}
function runtimeError(name) {
  const cls = class extends RuntimeError {};
  Object.defineProperty(cls, 'name', { value: name });
  cls.prototype.name = `Runtime.${name}`;
  return cls;
}
const ImportModuleError = runtimeError('ImportModuleError');
const HandlerNotFound = runtimeError('HandlerNotFound');
const MalformedHandlerName = runtimeError('MalformedHandlerName');
const UserCodeSyntaxError = runtimeError('UserCodeSyntaxError');
const NodeJsExit = runtimeError('NodeJsExit');
const UnhandledPromiseRejection = runtimeError('UnhandledPromiseRejection');

const NODE_JS_EXIT_MESSAGE =
  'The Lambda runtime client detected an unexpected Node.js exit code. This is most ' +
  'commonly caused by a Promise that was never settled. For more information, see ' +
  'https://nodejs.org/docs/latest/api/process.html#exit-codes';

function looksLikeError(value) {
  return (
    value &&
    typeof value.name === 'string' &&
    typeof value.message === 'string' &&
    typeof value.stack === 'string'
  );
}

/** The body of an /error post: errorType, errorMessage, trace. */
function errorBody(error) {
  try {
    if (util.types.isNativeError(error) || looksLikeError(error)) {
      return {
        errorType: error.name,
        errorMessage: error.message,
        trace: error.stack.split('\n'),
      };
    }
    return { errorType: typeof error, errorMessage: String(error), trace: [] };
  } catch (_) {
    return {
      errorType: 'handled',
      errorMessage:
        'callback called with Error argument, but there was a problem while retrieving ' +
        'one or more of its message, name, and stack',
    };
  }
}

/** An error as Lambda's text logs show it: its fields as one JSON object. */
function formattedError(error) {
  const withFields = (_key, value) => {
    if (value instanceof Error) {
      const out = Object.assign(
        { errorType: value.name, errorMessage: value.message, code: value.code },
        value,
      );
      if (typeof value.stack === 'string') {
        out.stack = value.stack.split('\n');
      }
      return out;
    }
    return value;
  };
  try {
    return '\t' + JSON.stringify(error, withFields);
  } catch (_) {
    return '\t' + JSON.stringify(errorBody(error));
  }
}

function intoError(value) {
  return value instanceof Error ? value : new Error(value);
}

// ---------------------------------------------------------------------------
// Logging: console.* as Lambda's Node.js runtime patches it.

const LEVELS = {
  TRACE: 1,
  DEBUG: 2,
  INFO: 3,
  WARN: 4,
  ERROR: 5,
  FATAL: 6,
};
const LOG_FORMAT_JSON = (process.env.AWS_LAMBDA_LOG_FORMAT || '').toUpperCase() === 'JSON';

function jsonLine(level, params) {
  const record = {
    timestamp: new Date().toISOString(),
    level,
    requestId: currentRequestId,
  };
  const errorFields = (value) => {
    if (value instanceof Error) {
      return Object.assign(
        {
          errorType: (value.constructor && value.constructor.name) || 'UnknownError',
          errorMessage: value.message,
          stackTrace: typeof value.stack === 'string' ? value.stack.split('\n') : value.stack,
        },
        value,
      );
    }
    return value;
  };
  if (params.length === 1) {
    record.message = params[0];
    try {
      return JSON.stringify(record, (_key, value) => errorFields(value));
    } catch (_) {
      record.message = util.format(record.message);
      return JSON.stringify(record);
    }
  }
  record.message = util.format(...params);
  const error = params.find((p) => p instanceof Error);
  if (error) {
    record.errorType = (error.constructor && error.constructor.name) || 'UnknownError';
    record.errorMessage = error.message;
    record.stackTrace = typeof error.stack === 'string' ? error.stack.split('\n') : [];
  }
  return JSON.stringify(record);
}

function writeLog(level, params) {
  const line = LOG_FORMAT_JSON
    ? jsonLine(level, params)
    : `${new Date().toISOString()}\t${currentRequestId}\t${level}\t${util.format(...params)}`;
  // One record, one line: Lambda keeps a multi-line message together so.
  process.stdout.write(line.replace(/\n/g, '\r') + '\n');
}

function patchConsole() {
  const minimum = LEVELS[(process.env.AWS_LAMBDA_LOG_LEVEL || '').toUpperCase()] || LEVELS.TRACE;
  const logger = (level) =>
    LEVELS[level] >= minimum ? (...params) => writeLog(level, params) : () => {};
  console.trace = logger('TRACE');
  console.debug = logger('DEBUG');
  console.info = logger('INFO');
  console.log = console.info;
  console.warn = logger('WARN');
  console.error = logger('ERROR');
  console.fatal = logger('FATAL');
}

/** How the runtime itself logs a failure (`Invoke Error`, `Uncaught Exception`...). */
function logError(title, error) {
  if (LOG_FORMAT_JSON) {
    console.error(intoError(error));
  } else {
    console.error(title, formattedError(intoError(error)));
  }
}

// ---------------------------------------------------------------------------
// The Runtime API over one keep-alive connection.

class RuntimeApi {
  constructor(address) {
    const colon = address.lastIndexOf(':');
    this.hostname = colon > 0 ? address.slice(0, colon) : '127.0.0.1';
    this.port = parseInt(address.slice(colon + 1), 10);
    // Node unreferences the idle socket of a keep-alive agent, so a waiting
    // connection never keeps the event loop (and 'beforeExit') from ending.
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  }

  request(method, urlPath, body, headers) {
    return new Promise((resolve, reject) => {
      const options = {
        hostname: this.hostname,
        port: this.port,
        path: API_PREFIX + urlPath,
        method,
        agent: this.agent,
        headers: Object.assign({}, headers || {}),
      };
      if (body !== undefined) {
        options.headers['Content-Length'] = Buffer.byteLength(body);
      }
      const req = http.request(options, (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () =>
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(body);
    });
  }

  async next() {
    const res = await this.request('GET', '/invocation/next');
    if (res.status !== 200) {
      throw new Error(`Failed to get next invocation: HTTP ${res.status}`);
    }
    return res;
  }

  postResponse(requestId, result) {
    let body;
    try {
      body = JSON.stringify(result === undefined ? null : result);
    } catch (_) {
      // Lambda's runtime fails the invocation the same way.
      return this.postError(requestId, new Error('Unable to stringify response body'));
    }
    return this.request('POST', `/invocation/${encodeURIComponent(requestId)}/response`, body, {
      'Content-Type': 'application/json',
    });
  }

  postError(requestId, error) {
    const body = errorBody(error);
    return this.request(
      'POST',
      `/invocation/${encodeURIComponent(requestId)}/error`,
      JSON.stringify(body),
      { 'Content-Type': 'application/json', [ERROR_TYPE_HEADER]: body.errorType },
    );
  }

  postInitError(error) {
    const body = errorBody(error);
    return this.request('POST', '/init/error', JSON.stringify(body), {
      'Content-Type': 'application/json',
      [ERROR_TYPE_HEADER]: body.errorType,
    });
  }
}

// ---------------------------------------------------------------------------
// Loading the handler.

/** Whether the nearest package.json above `folder` says "type": "module". */
function packageTypeIsModule(folder) {
  for (let dir = folder; ; dir = path.dirname(dir)) {
    if (dir.endsWith('/node_modules')) {
      return false;
    }
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) {
      try {
        return JSON.parse(fs.readFileSync(file, 'utf8')).type === 'module';
      } catch (e) {
        console.warn(`${file} cannot be read, it will be ignored for ES module detection purposes.`, e);
        return false;
      }
    }
    if (dir === path.dirname(dir)) {
      return false;
    }
  }
}

function requireIfPresent(file) {
  return fs.existsSync(file) ? require(file) : undefined;
}

async function importIfPresent(file) {
  return fs.existsSync(file) ? import(pathToFileURL(file).href) : undefined;
}

async function loadModule(taskRoot, moduleRoot, name) {
  const base = path.resolve(taskRoot, moduleRoot, name);
  const extensionless = requireIfPresent(base);
  if (extensionless) {
    return extensionless;
  }
  const isModule = fs.existsSync(base + '.js') && packageTypeIsModule(path.dirname(base));
  if (!isModule) {
    const loaded = requireIfPresent(base + '.js');
    if (loaded) {
      return loaded;
    }
  }
  const loaded =
    (isModule && (await importIfPresent(base + '.js'))) ||
    (await importIfPresent(base + '.mjs')) ||
    requireIfPresent(base + '.cjs');
  if (loaded) {
    return loaded;
  }
  // Node's own resolution (a package in node_modules, a directory...).
  return require(require.resolve(name, { paths: [taskRoot, path.resolve(taskRoot, moduleRoot)] }));
}

async function loadHandler(taskRoot, fullHandler) {
  if (fullHandler.includes('..')) {
    throw new MalformedHandlerName(
      `'${fullHandler}' is not a valid handler name. Use absolute paths when specifying root directories in handler names.`,
    );
  }
  const handlerPart = path.basename(fullHandler);
  const moduleRoot = fullHandler.slice(0, fullHandler.length - handlerPart.length);
  const match = handlerPart.match(/^([^.]*)\.(.*)$/);
  if (!match) {
    throw new MalformedHandlerName('Bad handler');
  }
  const [, moduleName, propertyPath] = match;
  let app;
  try {
    app = await loadModule(taskRoot, moduleRoot, moduleName);
  } catch (e) {
    if (e instanceof SyntaxError) {
      throw new UserCodeSyntaxError(e);
    }
    if (e && (e.code === 'MODULE_NOT_FOUND' || e.code === 'ERR_MODULE_NOT_FOUND')) {
      throw new ImportModuleError(e);
    }
    throw e;
  }
  const handler = propertyPath.split('.').reduce((value, key) => value && value[key], app);
  if (!handler) {
    throw new HandlerNotFound(`${fullHandler} is undefined or not exported`);
  }
  if (typeof handler !== 'function') {
    throw new HandlerNotFound(`${fullHandler} is not a function`);
  }
  return handler;
}

// ---------------------------------------------------------------------------
// Invocations.

// What ends the invocation when the event loop empties: set per
// invocation, replaced by the callback, a no-op in between.
let beforeExit = () => {};

// Where an uncaught exception or unhandled rejection is reported: the init
// until the first invocation, then the invocation in flight.
let reportFatal;

function jsonHeader(value, name) {
  if (value === undefined) {
    return undefined;
  }
  try {
    return JSON.parse(value);
  } catch (e) {
    throw new Error(`Cannot parse ${name} as json: ${e.toString()}`);
  }
}

function parseEvent(res) {
  const type = res.headers['content-type'] || 'application/json';
  const text = res.body.toString('utf8');
  return type.startsWith('application/json') ? JSON.parse(text) : text;
}

class Runtime {
  constructor(api, handler) {
    this.api = api;
    this.handler = handler;
    this.isAsync = handler.constructor && handler.constructor.name === 'AsyncFunction';
  }

  /** Runs the next iteration on the next turn of the event loop. */
  scheduleNext() {
    setImmediate(() =>
      this.handleOnce().catch((err) => {
        // Only a broken Runtime API gets here: nothing can be reported.
        console.log(`Unexpected Top Level Error: ${err.toString()}`);
        process.exit(1);
      }),
    );
  }

  async handleOnce() {
    const res = await this.api.next();
    const headers = res.headers;
    const requestId = headers['lambda-runtime-aws-request-id'];
    currentRequestId = requestId;
    if (headers['lambda-runtime-trace-id']) {
      process.env._X_AMZN_TRACE_ID = headers['lambda-runtime-trace-id'];
    } else {
      delete process.env._X_AMZN_TRACE_ID;
    }
    const { callback, context, markCompleted } = this.callbackContext(requestId);
    reportFatal = (error, exitCode) =>
      this.api.postError(requestId, error).finally(() => process.exit(exitCode));
    beforeExit = () => {
      markCompleted();
      if (this.isAsync) {
        // An async handler whose promise never settled.
        const error = new NodeJsExit(NODE_JS_EXIT_MESSAGE);
        logError('Invoke Error', error);
        this.post(this.api.postError(requestId, error));
      } else {
        // A callback handler that never called back: Lambda answers null.
        this.post(this.api.postResponse(requestId, null));
      }
    };
    try {
      const deadline = Number(headers['lambda-runtime-deadline-ms']);
      Object.assign(context, {
        functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
        functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
        memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
        logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
        logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
        clientContext: jsonHeader(headers['lambda-runtime-client-context'], 'ClientContext'),
        identity: jsonHeader(headers['lambda-runtime-cognito-identity'], 'CognitoIdentity'),
        invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'],
        awsRequestId: requestId,
        getRemainingTimeInMillis: () => deadline - Date.now(),
      });
      const result = this.handler(parseEvent(res), context, callback);
      if (result && typeof result.then === 'function') {
        result.then(context.succeed, context.fail).catch(context.fail);
      }
    } catch (err) {
      callback(err);
    }
  }

  /** Waits for a post, then goes on with the next invocation. */
  post(posted) {
    posted.then(
      () => this.scheduleNext(),
      (err) => {
        console.log(`Unexpected Top Level Error: ${err.toString()}`);
        process.exit(1);
      },
    );
  }

  /** The callback and the context's completion members, each allowed once. */
  callbackContext(requestId) {
    let completed = false;
    let finished = false;
    let waitForEmptyEventLoop = true;
    const complete = (result) => {
      if (completed) {
        console.error(
          'Invocation has already been reported as done. Cannot call complete more than once per invocation.',
        );
        return;
      }
      completed = true;
      this.post(this.api.postResponse(requestId, result));
    };
    const postError = (err) => {
      logError('Invoke Error', err);
      completed = true;
      this.post(this.api.postError(requestId, err));
    };
    const done = (err, result) => {
      beforeExit = () => {};
      if (err !== undefined && err !== null) {
        postError(err);
      } else {
        complete(result);
      }
    };
    const once =
      (fn) =>
      (...args) => {
        if (!finished) {
          finished = true;
          fn(...args);
        }
      };
    const callback = once((err, result) => {
      beforeExit = () => {};
      if (err !== undefined && err !== null) {
        postError(err);
      } else if (!waitForEmptyEventLoop) {
        complete(result);
      } else {
        // Lambda answers once the event loop is empty.
        beforeExit = () => {
          beforeExit = () => {};
          setImmediate(() => complete(result));
        };
      }
    });
    const context = {
      get callbackWaitsForEmptyEventLoop() {
        return waitForEmptyEventLoop;
      },
      set callbackWaitsForEmptyEventLoop(value) {
        waitForEmptyEventLoop = value;
      },
      succeed: once((result) => done(null, result)),
      fail: once((err) => done(err === undefined || err === null ? 'handled' : err, null)),
      done: once(done),
    };
    return {
      callback,
      context,
      markCompleted: () => {
        completed = true;
      },
    };
  }
}

// ---------------------------------------------------------------------------

async function main() {
  patchConsole();
  const api = new RuntimeApi(process.env.AWS_LAMBDA_RUNTIME_API || '127.0.0.1:9001');
  // `node bootstrap.js [handler]`, or `node -e <source> [handler]`.
  const args = process.argv.slice(require.main === module ? 2 : 1);
  const handlerName = args[0] || process.env._HANDLER || '';
  const taskRoot = process.env.LAMBDA_TASK_ROOT || process.cwd();

  reportFatal = (error, exitCode) => api.postInitError(error).finally(() => process.exit(exitCode));
  process.on('uncaughtException', (error) => {
    logError('Uncaught Exception', error);
    reportFatal(error, 129);
  });
  process.on('unhandledRejection', (reason) => {
    const error = new UnhandledPromiseRejection(reason);
    error.reason = reason;
    logError('Unhandled Promise Rejection', error);
    reportFatal(error, 128);
  });
  process.on('beforeExit', () => beforeExit());

  let handler;
  try {
    handler = await loadHandler(taskRoot, handlerName);
  } catch (error) {
    logError('Uncaught Exception', error);
    await api.postInitError(error).catch(() => {});
    process.exit(129);
  }
  new Runtime(api, handler).scheduleNext();
}

main();
