/*!
 * pushserver.js: the dependency-free browser client of pushserver.
 *
 *     const subscription = PushServer.subscribe('{% channel_url "news" %}', {
 *         onMessage(message) { ... message.channel, message.id, message.data, message.json() },
 *         onGap(gap) { ... }, onDeleted(channel) { ... },
 *     });
 *     subscription.subscribe('sport');  subscription.unsubscribe('news');  subscription.close();
 *
 * One source, two ways to load it: this classic script defines the global PushServer; the
 * ES module pushserver.mjs imports this file and exports the same object (no build step).
 * Types: pushserver.d.ts. The transports are tried in order from the preferred one (the
 * script tag's data-pushserver-transport, PUSH_SERVER['transport'], or options.transport):
 * WebSocket (subprotocol pushserver.v1) -> event stream -> long-poll, each one resuming from
 * the positions the previous one reached.
 */
(function (global) {
    'use strict';

    if (global.PushServer && global.PushServer.version) {
        return; // loaded twice (script and module): keep the first copy
    }

    var VERSION = '1';
    var ORDER = ['websocket', 'eventsource', 'longpoll'];
    var SUBPROTOCOL = 'pushserver.v1';
    var GAP_EVENT = 'pushserver.gap';
    var DELETED_EVENT = 'pushserver.deleted';
    var ORIGIN = '0:-1';
    // WebSocket close codes (docs/transports.md).
    var CLOSE = {goingAway: 1001, badRequest: 4400, notAllowed: 4403, notFound: 4404, deleted: 4410};
    var TEXT_TYPES = /^(text\/|application\/(json|javascript|ecmascript|xml|x-www-form-urlencoded)\b|[^;]*\+(json|xml)\b)/i;

    var DEFAULTS = {
        transport: null,         // the first transport to try; null: the script tag's, else websocket
        withCredentials: false,  // send cookies cross-origin (the location needs allow_credentials)
        events: [],              // event-stream mode: the event names to receive besides unnamed ones
        resume: false,           // true or a key: keep positions in sessionStorage across reloads
        retryDelay: 1000,        // first wait after a failure, doubled each time...
        maxRetryDelay: 30000,    // ...up to this (ms)...
        jitter: 0.5,             // ...each wait shortened by a random part up to this fraction
        fallbackAfter: 2,        // attempts that never opened before the next transport (until one did)
        minPollInterval: 250,    // long-poll: never poll a channel again sooner than this (ms)
        onMessage: null, onGap: null, onDeleted: null, onError: null, onTransport: null
    };

    function scriptTransport() {
        var doc = global.document;
        if (!doc) { return null; }
        var script = doc.currentScript && doc.currentScript.getAttribute('data-pushserver-transport') !== null
            ? doc.currentScript : doc.querySelector('script[data-pushserver-transport]');
        return script ? script.getAttribute('data-pushserver-transport') : null;
    }

    var pageTransport = scriptTransport();

    function backoff(options, failures) {
        var delay = Math.min(options.maxRetryDelay, options.retryDelay * Math.pow(2, Math.min(failures - 1, 30)));
        return Math.round(delay * (1 - options.jitter * Math.random()));
    }

    function call(subscription, name, args) {
        var handler = subscription.options[name];
        if (typeof handler !== 'function') { return; }
        try {
            handler.apply(subscription, args);
        } catch (error) {
            setTimeout(function () { throw error; }, 0); // reaches window.onerror, we go on
        }
    }

    function problem(subscription, kind, detail) {
        if (typeof subscription.options.onError === 'function') {
            call(subscription, 'onError', [kind, detail]);
        } else if (global.console) {
            global.console.warn('pushserver.js: ' + kind + ': ' + detail);
        }
    }

    // "<time>:<tag>" <-> numbers; compare positions.
    function parseId(text) {
        var match = /^\[?(\d+):(-1|\d+)\]?$/.exec(String(text).trim());
        return match ? [Number(match[1]), Number(match[2])] : null;
    }

    function after(a, b) {
        var x = parseId(a), y = parseId(b);
        return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
    }

    /* A subscriber URL: its location part, its channels (decoded), its query. */
    function splitUrl(url) {
        var absolute = new URL(url, global.location ? global.location.href : undefined);
        var path = absolute.pathname;
        var slash = path.lastIndexOf('/');
        var last = path.slice(slash + 1);
        var channels = last ? last.split(',').map(decodeURIComponent) : [];
        absolute.searchParams.delete('last_event_id');
        return {base: absolute.origin + path.slice(0, slash + 1), channels: channels, query: absolute.search};
    }

    function channelUrl(subscription, channels, lastEventId, scheme) {
        var url = subscription.base + channels.map(encodeURIComponent).join(',') + subscription.query;
        if (lastEventId) {
            url += (url.indexOf('?') < 0 ? '?' : '&') + 'last_event_id=' + encodeURIComponent(lastEventId);
        }
        return scheme ? url.replace(/^http/, scheme) : url;
    }

    function Message(channel, id, data, contentType, event) {
        this.channel = channel;
        this.id = id;
        this.data = data;               // a string, or an ArrayBuffer for a binary body
        this.contentType = contentType; // null over event streams, which do not carry it
        this.event = event || null;     // the X-EventSource-Event name, if any
    }

    Message.prototype.text = function () {
        return typeof this.data === 'string' ? this.data : new TextDecoder().decode(this.data);
    };

    Message.prototype.json = function () {
        return JSON.parse(this.text());
    };

    /* ---------------------------------------------------------------------------------- */

    function Subscription(url, options) {
        var parts = splitUrl(url);
        if (!parts.channels.length) {
            throw new Error('pushserver.js: the URL names no channel: ' + url);
        }
        this.options = Object.assign({}, DEFAULTS, options || {});
        this.base = parts.base;
        this.query = parts.query;
        this.channels = parts.channels;
        this.positions = {};            // channel -> last id received
        this.transport = null;          // the running transport's name
        this.closed = false;
        this.storageKey = this.options.resume
            ? (typeof this.options.resume === 'string' ? this.options.resume : 'pushserver:' + url) : null;
        this.restore();
        var first = this.options.transport || pageTransport || 'websocket';
        this.order = ORDER.slice(Math.max(0, ORDER.indexOf(first)));
        this.runner = null;
        this.next();
    }

    Subscription.prototype.restore = function () {
        if (!this.storageKey) { return; }
        try {
            var saved = JSON.parse(global.sessionStorage.getItem(this.storageKey) || '{}');
            for (var channel in saved) {
                if (parseId(saved[channel])) { this.positions[channel] = saved[channel]; }
            }
        } catch (error) { /* storage unavailable or corrupt: start from the buffer */ }
    };

    Subscription.prototype.save = function () {
        if (!this.storageKey) { return; }
        try {
            global.sessionStorage.setItem(this.storageKey, JSON.stringify(this.positions));
        } catch (error) { /* full or unavailable: resume within the page only */ }
    };

    Subscription.prototype.position = function (channel) {
        return this.positions[channel] || ORIGIN;
    };

    // The next transport of the order that this browser has; started at the positions.
    Subscription.prototype.next = function (reason) {
        if (this.runner) { this.runner.stop(); this.runner = null; }
        while (this.order.length) {
            var name = this.order.shift();
            if (TRANSPORTS[name].available()) {
                if (reason) { problem(this, 'transport', reason + '; falling back to ' + name); }
                this.transport = name;
                this.runner = new TRANSPORTS[name](this);
                call(this, 'onTransport', [name]);
                this.runner.start();
                return;
            }
        }
        this.transport = null;
        problem(this, 'transport', (reason || 'no transport available') + '; giving up');
    };

    // A message from any transport: delivered once, in order, then the position moves on.
    Subscription.prototype.deliver = function (message) {
        var known = this.positions[message.channel];
        if (this.closed || this.channels.indexOf(message.channel) < 0 || (known && !after(message.id, known))) {
            return;
        }
        this.positions[message.channel] = message.id;
        this.save();
        call(this, 'onMessage', [message]);
    };

    Subscription.prototype.gap = function (gap) {
        call(this, 'onGap', [{channel: gap.channel, after: gap.after, next: gap.next === undefined ? null : gap.next}]);
    };

    Subscription.prototype.deleted = function (channel) {
        var index = this.channels.indexOf(channel);
        if (index < 0) { return; }
        this.channels.splice(index, 1);
        delete this.positions[channel];
        this.save();
        call(this, 'onDeleted', [channel]);
        if (!this.channels.length && this.runner) { this.runner.stop(); }
    };

    Subscription.prototype.subscribe = function (channel) {
        channel = String(channel);
        if (this.closed || this.channels.indexOf(channel) >= 0) { return false; }
        this.channels.push(channel);
        if (this.runner) { this.runner.changed('subscribe', channel); }
        return true;
    };

    Subscription.prototype.unsubscribe = function (channel) {
        channel = String(channel);
        var index = this.channels.indexOf(channel);
        if (this.closed || index < 0) { return false; }
        this.channels.splice(index, 1);
        if (this.runner) { this.runner.changed('unsubscribe', channel); }
        return true;
    };

    Subscription.prototype.close = function () {
        this.closed = true;
        if (this.runner) { this.runner.stop(); this.runner = null; }
    };

    /* ---------------------------------------------------------------------------------- */
    /* Each transport: new T(subscription), start(), stop(), changed(what, channel).       */

    // Shared by the two streaming transports: reconnect with backoff, fall back when a
    // transport never opened fallbackAfter times in a row.
    function Reconnecting(subscription) {
        this.sub = subscription;
        this.failures = 0;     // failed attempts in a row (for the backoff)
        this.neverOpened = 0;  // attempts in a row that never opened (for the fallback)
        this.everOpened = false;
        this.timer = null;
        this.running = false;
    }

    Reconnecting.prototype.start = function () {
        this.running = true;
        this.connect();
    };

    Reconnecting.prototype.stop = function () {
        this.running = false;
        clearTimeout(this.timer);
        this.timer = null;
        this.disconnect();
    };

    // The connection opened: the counts of failed attempts in a row start again.
    Reconnecting.prototype.markOpen = function () {
        this.neverOpened = 0;
        this.failures = 0;
    };

    Reconnecting.prototype.retry = function (opened, why) {
        this.disconnect();
        if (!this.running) { return; }
        this.neverOpened = opened ? 0 : this.neverOpened + 1;
        this.everOpened = this.everOpened || opened;
        // A transport that worked once is not given up for an outage (a server restart
        // refuses connections for a while): it retries. One that never opened falls back.
        if (!this.everOpened && this.neverOpened >= this.sub.options.fallbackAfter) {
            this.sub.next(why);
            return;
        }
        this.failures = opened ? 1 : this.failures + 1;
        var self = this;
        this.timer = setTimeout(function () {
            self.timer = null;
            if (self.running && self.sub.channels.length) { self.connect(); }
        }, backoff(this.sub.options, this.failures));
    };

    Reconnecting.prototype.reconnectNow = function () {
        this.disconnect();
        clearTimeout(this.timer);
        this.timer = null;
        if (this.running && this.sub.channels.length) { this.connect(); }
    };

    Reconnecting.prototype.compoundId = function () {
        var sub = this.sub;
        var any = sub.channels.some(function (channel) { return sub.positions[channel]; });
        return any ? sub.channels.map(function (channel) { return sub.position(channel); }).join(',') : '';
    };

    function inherit(Child) {
        Child.prototype = Object.create(Reconnecting.prototype);
        Child.prototype.constructor = Child;
        return Child;
    }

    /* WebSocket, subprotocol pushserver.v1: header-line frames, JSON control frames, and
       subscribe / unsubscribe commands on the open connection. */
    var WebSocketTransport = inherit(function WebSocketTransport(subscription) {
        Reconnecting.call(this, subscription);
        this.socket = null;
    });

    WebSocketTransport.available = function () {
        return typeof global.WebSocket === 'function';
    };

    WebSocketTransport.prototype.connect = function () {
        var self = this, sub = this.sub, opened = false;
        var socket = this.socket = new global.WebSocket(
            channelUrl(sub, sub.channels, this.compoundId(), 'ws'), [SUBPROTOCOL]);
        socket.binaryType = 'arraybuffer';
        socket.onopen = function () {
            opened = true;
            self.markOpen();
        };
        socket.onmessage = function (event) {
            if (socket === self.socket) { self.frame(event.data); }
        };
        socket.onclose = function (event) {
            if (socket !== self.socket) { return; }
            if (event.code === CLOSE.deleted) {
                sub.channels.slice().forEach(function (channel) { sub.deleted(channel); });
                self.disconnect();
            } else if (event.code === CLOSE.notAllowed) {
                sub.next('the server refused WebSocket (' + event.code + ' ' + event.reason + ')');
            } else if (event.code === CLOSE.badRequest || event.code === CLOSE.notFound) {
                problem(sub, 'closed', event.code + ' ' + event.reason);
                self.stop();
            } else {
                self.retry(opened, 'WebSocket did not open');
            }
        };
    };

    WebSocketTransport.prototype.disconnect = function () {
        if (this.socket) {
            var socket = this.socket;
            this.socket = null;
            socket.onopen = socket.onmessage = socket.onclose = null;
            socket.close();
        }
    };

    WebSocketTransport.prototype.frame = function (data) {
        var sub = this.sub, text, body;
        if (typeof data === 'string') {
            if (data.charAt(0) === '{') {
                var notice;
                try { notice = JSON.parse(data); } catch (error) { return; }
                if (notice.type === 'gap') { sub.gap(notice); }
                if (notice.type === 'deleted') { sub.deleted(notice.channel); }
                if (notice.type === 'error') { problem(sub, 'server', notice.error); }
                return;
            }
            var split = data.indexOf('\n\n');
            text = data.slice(0, split);
            body = data.slice(split + 2);
        } else {
            var bytes = new Uint8Array(data), end = -1;
            for (var i = 0; i + 1 < bytes.length; i++) {
                if (bytes[i] === 10 && bytes[i + 1] === 10) { end = i; break; }
            }
            if (end < 0) { return; }
            text = new TextDecoder().decode(bytes.subarray(0, end));
            body = data.slice(end + 2);
        }
        var headers = {};
        text.split('\n').forEach(function (line) {
            var colon = line.indexOf(': ');
            if (colon > 0) { headers[line.slice(0, colon)] = line.slice(colon + 2); }
        });
        if (headers.id && headers.channel) {
            sub.deliver(new Message(headers.channel, headers.id, body, headers['content-type'] || null, headers.event));
        }
    };

    WebSocketTransport.prototype.changed = function (what, channel) {
        if (!this.socket || this.socket.readyState !== 1) {
            this.reconnectNow();
            return;
        }
        var command = {};
        command[what] = channel;
        if (what === 'subscribe' && this.sub.positions[channel]) {
            command.last_event_id = this.sub.positions[channel];
        }
        this.socket.send(JSON.stringify(command));
        if (!this.sub.channels.length) { this.disconnect(); }
    };

    /* Event stream: one EventSource for all the channels (a compound id names each one's
       position); a change of channels reconnects from the positions reached. */
    var EventSourceTransport = inherit(function EventSourceTransport(subscription) {
        Reconnecting.call(this, subscription);
        this.source = null;
    });

    EventSourceTransport.available = function () {
        return typeof global.EventSource === 'function';
    };

    EventSourceTransport.prototype.connect = function () {
        var self = this, sub = this.sub, opened = false;
        var channels = sub.channels.slice();
        var source = this.source = new global.EventSource(
            channelUrl(sub, channels, this.compoundId()), {withCredentials: !!sub.options.withCredentials});
        function listen(type, handler) {
            source.addEventListener(type, function (event) {
                if (source === self.source) { handler(event); }
            });
        }
        function message(event) {
            var ids = String(event.lastEventId).split(',');
            var index = ids.length === 1 ? 0 : ids.findIndex(function (id) { return id.charAt(0) === '['; });
            var channel = channels[index];
            if (channel !== undefined) {
                sub.deliver(new Message(channel, ids[index].replace(/[[\]]/g, ''), event.data, null,
                    event.type === 'message' ? null : event.type));
            }
        }
        listen('open', function () {
            opened = true;
            self.markOpen();
        });
        listen('message', message);
        sub.options.events.forEach(function (name) { listen(name, message); });
        listen(GAP_EVENT, function (event) { sub.gap(JSON.parse(event.data)); });
        listen(DELETED_EVENT, function (event) { sub.deleted(JSON.parse(event.data).channel); });
        listen('error', function () {
            // Our own backoff and positions, not the browser's fixed retry.
            self.retry(opened, 'the server did not answer with an event stream');
        });
    };

    EventSourceTransport.prototype.disconnect = function () {
        if (this.source) {
            this.source.close();
            this.source = null;
        }
    };

    EventSourceTransport.prototype.changed = function () {
        this.reconnectNow();
    };

    /* Long-poll (the NHPM protocol): one waiting request per channel, positions in
       If-Modified-Since / If-None-Match. */
    function LongPollTransport(subscription) {
        this.sub = subscription;
        this.polls = {}; // channel -> {abort: AbortController, timer}
        this.running = false;
    }

    LongPollTransport.available = function () {
        return typeof global.fetch === 'function' && typeof global.AbortController === 'function';
    };

    LongPollTransport.prototype.start = function () {
        this.running = true;
        this.sub.channels.forEach(this.poll, this);
    };

    LongPollTransport.prototype.stop = function () {
        this.running = false;
        Object.keys(this.polls).forEach(this.end, this);
    };

    LongPollTransport.prototype.end = function (channel) {
        var poll = this.polls[channel];
        if (poll) {
            delete this.polls[channel];
            clearTimeout(poll.timer);
            poll.abort.abort();
        }
    };

    LongPollTransport.prototype.changed = function (what, channel) {
        if (what === 'subscribe') { this.poll(channel); } else { this.end(channel); }
    };

    LongPollTransport.prototype.poll = function (channel) {
        var self = this, sub = this.sub;
        if (!this.running || this.polls[channel]) { return; }
        var poll = this.polls[channel] = {abort: new AbortController(), timer: null, failures: 0};

        function again(delay) {
            if (self.polls[channel] !== poll) { return; }
            poll.abort = new AbortController();
            poll.timer = setTimeout(request, delay);
        }

        function request() {
            var position = parseId(sub.position(channel));
            var started = Date.now();
            var headers = {'If-None-Match': String(position[1])};
            headers['If-Modified-Since'] = new Date(position[0] * 1000).toUTCString();
            fetch(channelUrl(sub, [channel]), {
                headers: headers,
                cache: 'no-store',
                credentials: sub.options.withCredentials ? 'include' : 'same-origin',
                signal: poll.abort.signal
            }).then(function (response) {
                if (response.status === 410) {
                    self.end(channel);
                    sub.deleted(channel);
                    return null;
                }
                if (response.status === 304) {
                    poll.failures = 0;
                    return 'again';
                }
                if (response.status !== 200) {
                    throw new Error('status ' + response.status);
                }
                var type = response.headers.get('Content-Type') || '';
                var read = TEXT_TYPES.test(type) ? response.text() : response.arrayBuffer();
                return read.then(function (body) {
                    var tag = response.headers.get('Etag');
                    var time = Date.parse(response.headers.get('Last-Modified')) / 1000;
                    poll.failures = 0;
                    sub.deliver(new Message(channel, time + ':' + tag, body, type || null,
                        response.headers.get('X-EventSource-Event')));
                    return 'again';
                });
            }).then(function (next) {
                if (next) { again(Math.max(0, sub.options.minPollInterval - (Date.now() - started))); }
            }, function (error) {
                if (error && error.name === 'AbortError') { return; }
                poll.failures += 1;
                if (poll.failures === 1) { problem(sub, 'request', channel + ': ' + error); }
                again(backoff(sub.options, poll.failures));
            });
        }

        request();
    };

    var TRANSPORTS = {
        websocket: WebSocketTransport,
        eventsource: EventSourceTransport,
        longpoll: LongPollTransport
    };

    global.PushServer = {
        version: VERSION,
        subprotocol: SUBPROTOCOL,
        transports: ORDER.slice(),
        defaults: DEFAULTS,
        subscribe: function (url, options) { return new Subscription(url, options); },
        Subscription: Subscription,
        Message: Message
    };
}(typeof globalThis !== 'undefined' ? globalThis : window));
