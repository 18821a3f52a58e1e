/*!
 * pushserver updates.js: receive pushed JSON updates in the browser (requires jQuery >= 1.5.1).
 *
 *     $.updates.subscribe({main: '{% channel_url "some_channel_id" %}'});
 *     $.updates.registerProcessor('main', 'answer', function (data) { ... });
 *     $.updates.unsubscribe('main');
 *
 * Each message is a JSON object; its top-level "type" picks the processors that get it.
 * $.updates.transport ('longpoll', 'eventsource' or 'websocket', from the script tag's
 * data-pushserver-transport attribute) picks how channels subscribed afterwards receive;
 * the API and what processors see are the same for all three. A streaming transport the
 * browser lacks, or the server refuses, falls back to long polling from the same position.
 * Plain ES5, no build step, so the file runs as served in old and new browsers.
 */
(function ($, window) {
    'use strict';

    if ($.updates && $.updates.version) {
        return; // loaded twice: keep the first copy and its channels
    }

    // The first request asks for everything the channel still holds.
    var EPOCH = 'Thu, 1 Jan 1970 00:00:00 GMT';
    var FIRST_ETAG = '0';
    var CORS_HEADERS = [
        'Cache-Control', 'Content-Language', 'Content-Type', 'Expires', 'Last-Modified', 'Pragma', 'Etag'
    ];

    var options = {
        // First wait after a failed request; it doubles with each further failure...
        retryDelay: 1000,
        // ...up to this many milliseconds.
        maxRetryDelay: 30000,
        // Each wait is shortened by a random fraction up to this, so that clients cut off
        // together (a server restart) do not all come back in the same instant.
        jitter: 0.5,
        // A 304 (long-poll timeout, server shutdown, an interval-polling location) is
        // followed by the next request at once, but never sooner than this after the
        // previous one started, so a server answering 304 at once is not hammered.
        minPollInterval: 1000,
        withCredentials: true,
        // Opt-in behaviours of the original script, which applied them to every request:
        // abort all global jQuery requests when the page unloads...
        abortOnUnload: false,
        // ...and rebuild missing CORS response headers (an old Firefox bug) for our requests.
        firefoxHeaderWorkaround: false,
        // Event-stream mode only: messages published with an event name (X-EventSource-Event)
        // reach EventSource as events of that name, so list the names to receive here.
        eventNames: [],
        // WebSocket mode only: fall back to long polling after this many attempts in a row
        // that never opened (a proxy without WebSocket support; the server down at page load
        // costs nothing, long polling retries as well).
        websocketAttempts: 3,
        // function (channelName, kind, detail): told about problems instead of the console.
        // kind is 'request', 'headers', 'empty', 'parse', 'format', 'processor', 'transport',
        // 'gap' (messages left the server's buffer before this page got them) or 'deleted'.
        onError: null
    };

    var transports = {};  // transport name -> constructor(name, url, position)
    var channels = {};    // channel name -> running transport instance
    var positions = {};   // channel name -> where an unsubscribed channel stopped
    var processors = {};  // channel name -> type -> [function]
    var hasOwn = Object.prototype.hasOwnProperty;
    var toString = Object.prototype.toString;
    // Only jQuery functions that exist from 1.5.1 to 4.x (4.0 dropped $.isArray, $.parseJSON).
    var parseJSON = window.JSON && window.JSON.parse ? window.JSON.parse : $.parseJSON;
    var on = $.fn.on ? 'on' : 'bind'; // .on is 1.7+

    function listen(target, events, handler) {
        $(target)[on](events, handler);
    }

    function now() {
        return new Date().getTime();
    }

    function rethrowLater(error) {
        // Reaches window.onerror and the console with its stack, without stopping us.
        window.setTimeout(function () { throw error; }, 0);
    }

    function report(name, kind, detail) {
        if (typeof options.onError === 'function') {
            try {
                options.onError(name, kind, detail);
            } catch (error) {
                rethrowLater(error);
            }
        } else if (kind === 'processor') {
            rethrowLater(detail);
        } else if (window.console && window.console.warn) {
            window.console.warn('updates.js: channel "' + name + '": ' + kind + ': ' + detail);
        }
    }

    // Capped exponential backoff with jitter: failure n waits retryDelay * 2^(n-1), at most
    // maxRetryDelay, shortened by a random part up to jitter; by default 0.5-1 s, 1-2 s,
    // 2-4 s... and finally 15-30 s.
    function backoff(failures) {
        var delay = Math.min(options.maxRetryDelay, options.retryDelay * Math.pow(2, Math.min(failures - 1, 30)));
        return Math.round(delay * (1 - options.jitter * Math.random()));
    }

    function dispatch(name, message) {
        var byType = hasOwn.call(processors, name) ? processors[name] : null;
        var list = byType && hasOwn.call(byType, message.type) ? byType[message.type].slice() : [];
        for (var i = 0; i < list.length; i++) {
            try {
                list[i](message);
            } catch (error) {
                report(name, 'processor', error);
            }
        }
    }

    // Parse one message body and hand it to the processors; anything else is reported and
    // skipped (the caller has already moved past it, so it is reported once).
    function deliver(name, text) {
        var message;
        if (!text) {
            report(name, 'empty', 'an empty message was skipped');
            return;
        }
        try {
            message = parseJSON(text);
        } catch (error) {
            report(name, 'parse', 'a message that is not JSON was skipped: ' + error);
            return;
        }
        if (toString.call(message) !== '[object Object]') {
            report(name, 'format', 'a message that is not a JSON object was skipped');
            return;
        }
        dispatch(name, message);
    }

    function etagOf(xhr) {
        var etag = xhr.getResponseHeader('Etag');
        if (etag) {
            return etag;
        }
        // Some browsers could not read Etag cross-origin; the server repeats it here.
        var match = /(?:^|[\s,])etag=([^\s,]+)/i.exec(xhr.getResponseHeader('Cache-Control') || '');
        return match ? match[1] : null;
    }

    // An XMLHttpRequest whose getAllResponseHeaders() falls back to reading the CORS-safe
    // headers one by one, for old Firefox versions that returned nothing cross-origin.
    function workaroundXhr() {
        var xhr = $.ajaxSettings.xhr();
        var getAll = xhr.getAllResponseHeaders;
        xhr.getAllResponseHeaders = function () {
            var all = getAll.call(xhr);
            if (all) {
                return all;
            }
            all = '';
            $.each(CORS_HEADERS, function (i, header) {
                var value = xhr.getResponseHeader(header);
                if (value) {
                    all += header + ': ' + value + '\r\n';
                }
            });
            return all;
        };
        return xhr;
    }

    /*
     * Long polling, as the Nginx HTTP Push Module defines it: each GET names the position
     * read so far (If-Modified-Since + If-None-Match) and returns the next message after it,
     * waiting as long as it takes. Every transport implements the same small interface:
     * new Transport(name, url, position); start(); stop(); position() -> {url, lastModified,
     * etag[, lastEventId]}; and optionally Transport.available() -> whether the browser can.
     */
    function LongPoll(name, url, position) {
        this.name = name;
        this.url = url;
        this.lastModified = position ? position.lastModified : EPOCH;
        this.etag = position ? position.etag : FIRST_ETAG;
        this.failures = 0;
        this.request = null;
        this.timer = null;
        this.running = false;
    }

    LongPoll.prototype.start = function () {
        if (!this.running) {
            this.running = true;
            this.poll();
        }
    };

    LongPoll.prototype.stop = function () {
        this.running = false;
        if (this.timer !== null) {
            window.clearTimeout(this.timer);
            this.timer = null;
        }
        if (this.request) {
            var request = this.request;
            this.request = null;
            request.abort();
        }
    };

    LongPoll.prototype.position = function () {
        return {url: this.url, lastModified: this.lastModified, etag: this.etag};
    };

    LongPoll.prototype.schedule = function (delay) {
        var self = this;
        if (!self.running) {
            return;
        }
        if (delay <= 0) {
            // Directly, not through a timer: background tabs throttle timers.
            self.poll();
            return;
        }
        self.timer = window.setTimeout(function () {
            self.timer = null;
            self.poll();
        }, delay);
    };

    LongPoll.prototype.poll = function () {
        var self = this;
        var started = now();
        var settings = {
            url: self.url,
            type: 'GET',
            dataType: 'text', // parsed by deliver(), so a bad body can be skipped
            cache: false,
            timeout: 0, // wait as long as the server holds the request
            global: false, // not an ajaxStart/ajaxStop/ajaxError event for the page
            headers: {'If-Modified-Since': self.lastModified, 'If-None-Match': self.etag},
            xhrFields: {withCredentials: options.withCredentials}
        };
        if (options.firefoxHeaderWorkaround) {
            settings.xhr = workaroundXhr;
        }
        var request = self.request = $.ajax(settings);
        request.done(function (text, status, xhr) {
            if (request !== self.request) {
                return; // stopped meanwhile
            }
            self.request = null;
            self.failures = 0;
            if (xhr.status === 304) {
                // Nothing new (a long-poll timeout or the server going away): same position.
                self.schedule(options.minPollInterval - (now() - started));
                return;
            }
            var lastModified = xhr.getResponseHeader('Last-Modified');
            var etag = etagOf(xhr);
            if (lastModified) {
                self.lastModified = lastModified;
            }
            self.etag = etag || FIRST_ETAG;
            deliver(self.name, text);
            if (lastModified && etag) {
                self.schedule(0);
            } else {
                report(self.name, 'headers', 'the response has no Last-Modified or Etag header');
                self.schedule(options.retryDelay);
            }
        });
        request.fail(function (xhr, status, error) {
            if (request !== self.request) {
                return;
            }
            self.request = null;
            self.failures += 1;
            if (self.failures === 1) {
                // Once per outage, not once per retry.
                report(self.name, 'request', (xhr.status || status) + (error ? ' ' + error : '') + ', retrying');
            }
            self.schedule(backoff(self.failures));
        });
    };

    transports.longpoll = LongPoll;

    /*
     * Positions across transports. Streaming transports name a position by the message id
     * "<time>:<tag>" (several, comma-separated, for a URL naming several channels); long
     * polling by the pair Last-Modified (the HTTP date of <time>) / Etag (<tag>). Both say
     * the same thing, so a channel can change transport (a fallback, or unsubscribe and
     * subscribe under another $.updates.transport) without losing or repeating a message.
     * position() of every transport returns {url, lastModified, etag, lastEventId}.
     */
    var ID_RE = /^\[?(\d+):(-?\d+)\]?$/;
    var DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
    var MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

    function pad(number) {
        return (number < 10 ? '0' : '') + number;
    }

    // Written out rather than toUTCString(), whose format varies between old browsers.
    function httpDate(seconds) {
        var d = new Date(seconds * 1000);
        return DAYS[d.getUTCDay()] + ', ' + pad(d.getUTCDate()) + ' ' + MONTHS[d.getUTCMonth()] + ' ' +
            d.getUTCFullYear() + ' ' + pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' +
            pad(d.getUTCSeconds()) + ' GMT';
    }

    // The id to resume after, or null for "from the oldest message the server holds".
    function idOfPosition(position) {
        if (!position) {
            return null;
        }
        if (position.lastEventId) {
            return position.lastEventId;
        }
        var time = Date.parse(position.lastModified);
        if (isNaN(time) || !/^-?\d+$/.test(position.etag) || (time <= 0 && position.etag === FIRST_ETAG)) {
            return null;
        }
        return Math.floor(time / 1000) + ':' + position.etag;
    }

    function positionOfId(url, id) {
        var match = id ? ID_RE.exec(id) : null;
        return {
            url: url,
            lastEventId: id,
            // A compound id has no long-poll equivalent (long polling reads one channel).
            lastModified: match ? httpDate(parseInt(match[1], 10)) : EPOCH,
            etag: match ? match[2] : FIRST_ETAG
        };
    }

    function withParameter(url, name, value) {
        url = url.split('#')[0];
        return url + (url.indexOf('?') < 0 ? '?' : '&') + name + '=' + encodeURIComponent(value);
    }

    // The channel ids a subscriber URL names: its last path segment split at commas, as
    // the server splits it (each at most once, in order).
    function channelIds(url) {
        var path = url.split('#')[0].split('?')[0];
        var parts = path.slice(path.lastIndexOf('/') + 1).split(',');
        var ids = [];
        var seen = {};
        for (var i = 0; i < parts.length; i++) {
            var id;
            try {
                id = decodeURIComponent(parts[i]);
            } catch (error) {
                id = parts[i];
            }
            if (!hasOwn.call(seen, id)) {
                seen[id] = true;
                ids.push(id);
            }
        }
        return ids;
    }

    function parseJSONObject(text) {
        try {
            var value = parseJSON(text);
            return toString.call(value) === '[object Object]' ? value : null;
        } catch (error) {
            return null;
        }
    }

    // Server notices shared by both streaming transports: {"type": "gap" | "deleted", ...}.
    function reportNotice(name, notice) {
        if (notice.type === 'gap') {
            report(name, 'gap', 'messages after ' + notice.after + ' on "' + notice.channel +
                '" were dropped by the server before they were received' +
                (notice.next ? '; continuing with ' + notice.next : ''));
        } else if (notice.type === 'deleted') {
            report(name, 'deleted', 'channel "' + notice.channel + '" was deleted');
        }
    }

    // A streaming transport gives up on its own: the channel is no longer subscribed, and a
    // later subscribe() of the name resumes from where it stopped.
    function ended(transport) {
        transport.stop();
        if (channels[transport.name] === transport) {
            delete channels[transport.name];
            positions[transport.name] = transport.position();
        }
    }

    // The server refused a streaming transport: long-poll the channel from the same position.
    function fallBack(transport, why) {
        var name = transport.name;
        transport.stop();
        if (channels[name] !== transport) {
            return;
        }
        report(name, 'transport', why + '; using long polling');
        var channel = channels[name] = new LongPoll(name, transport.url, transport.position());
        if (!suspended) {
            channel.start();
        }
    }

    /*
     * Server-sent events: one EventSource per channel, on the channel's subscriber URL. The
     * browser reconnects by itself when the stream ends (a server restart) and resumes with
     * the Last-Event-ID header. It gives up (readyState CLOSED) only when the server answers
     * with something other than an event stream: an EventSource that never opened means the
     * server does not serve event streams here (it answered as long-poll, or 403), so the
     * channel falls back to long polling; one that had opened is replaced after a backoff,
     * resuming with ?last_event_id=, and falls back if the replacement is refused too.
     */
    var GAP_EVENT = 'pushserver.gap';
    var DELETED_EVENT = 'pushserver.deleted';

    function EventSourceTransport(name, url, position) {
        this.name = name;
        this.url = url;
        this.lastEventId = idOfPosition(position);
        this.channelCount = channelIds(url).length;
        this.deleted = {};
        this.source = null;
        this.timer = null;
        this.failures = 0;
        this.interrupted = false;
        this.running = false;
    }

    EventSourceTransport.available = function () {
        return typeof window.EventSource === 'function' || typeof window.EventSource === 'object';
    };

    EventSourceTransport.prototype.start = function () {
        if (!this.running) {
            this.running = true;
            this.connect();
        }
    };

    EventSourceTransport.prototype.stop = function () {
        this.running = false;
        if (this.timer !== null) {
            window.clearTimeout(this.timer);
            this.timer = null;
        }
        if (this.source) {
            var source = this.source;
            this.source = null;
            source.close();
        }
    };

    EventSourceTransport.prototype.position = function () {
        return positionOfId(this.url, this.lastEventId);
    };

    EventSourceTransport.prototype.connect = function () {
        var self = this;
        var url = self.lastEventId ? withParameter(self.url, 'last_event_id', self.lastEventId) : self.url;
        var source = self.source = new window.EventSource(url, {withCredentials: options.withCredentials});
        var opened = false;

        // Events of a source that was stopped or replaced meanwhile are ignored.
        function on(type, handler) {
            source.addEventListener(type, function (event) {
                if (source === self.source) {
                    handler(event);
                }
            }, false);
        }

        function message(event) {
            if (event.lastEventId) {
                self.lastEventId = event.lastEventId;
            }
            deliver(self.name, event.data);
        }

        on('open', function () {
            opened = true;
            self.failures = 0;
            self.interrupted = false;
        });
        on('message', message);
        for (var i = 0; i < options.eventNames.length; i++) {
            on(options.eventNames[i], message);
        }
        on(GAP_EVENT, function (event) {
            reportNotice(self.name, parseJSONObject(event.data) || {});
        });
        on(DELETED_EVENT, function (event) {
            var notice = parseJSONObject(event.data) || {};
            reportNotice(self.name, notice);
            self.deleted[notice.channel] = true;
            var count = 0;
            $.each(self.deleted, function () { count++; });
            if (count >= self.channelCount) {
                ended(self); // the server ends the stream after the last channel
            }
        });
        on('error', function () {
            if (source.readyState !== 2) { // CONNECTING: the browser is reconnecting by itself
                if (!self.interrupted) {
                    self.interrupted = true;
                    report(self.name, 'request', 'the event stream was interrupted, reconnecting');
                }
                return;
            }
            self.source = null;
            source.close();
            if (!opened) {
                fallBack(self, 'the server did not answer with an event stream');
                return;
            }
            self.failures += 1;
            self.timer = window.setTimeout(function () {
                self.timer = null;
                if (self.running) {
                    self.connect();
                }
            }, backoff(self.failures));
        });
    };

    transports.eventsource = EventSourceTransport;

    /*
     * WebSocket: one connection per channel to its subscriber URL with ws: / wss:. Message
     * frames are header lines (id, channel, content-type, event), a blank line, the body;
     * frames starting with "{" are JSON notices (gap, deleted, ping...). A closed connection
     * is reopened with ?last_event_id=<last id> after a backoff that depends on the close code.
     */
    var CLOSE_GOING_AWAY = 1001;
    var CLOSE_NOT_ALLOWED = 4403;
    var CLOSE_TOO_SLOW = 4408;
    var CLOSE_DELETED = 4410;

    function absoluteUrl(url) {
        var link = document.createElement('a');
        link.href = url;
        return link.href;
    }

    function utf8(bytes) {
        if (window.TextDecoder) {
            return new window.TextDecoder('utf-8', {fatal: true}).decode(bytes);
        }
        var binary = '';
        for (var i = 0; i < bytes.length; i++) {
            binary += String.fromCharCode(bytes[i]);
        }
        return decodeURIComponent(window.escape(binary)); // throws on bytes that are not UTF-8
    }

    // {headers: {name: value}, body: text or null when the body is not UTF-8}, or null.
    function parseFrame(data) {
        var head;
        var body;
        if (typeof data === 'string') {
            var end = data.indexOf('\n\n');
            if (end < 0) {
                return null;
            }
            head = data.slice(0, end);
            body = data.slice(end + 2);
        } else { // binary frame: UTF-8 header lines, then the raw body
            var bytes = new window.Uint8Array(data);
            var at = -1;
            for (var i = 0; i + 1 < bytes.length; i++) {
                if (bytes[i] === 10 && bytes[i + 1] === 10) {
                    at = i;
                    break;
                }
            }
            if (at < 0) {
                return null;
            }
            try {
                head = utf8(bytes.subarray(0, at));
            } catch (error) {
                return null;
            }
            try {
                body = utf8(bytes.subarray(at + 2));
            } catch (error) {
                body = null;
            }
        }
        var headers = {};
        var lines = head.split('\n');
        for (var j = 0; j < lines.length; j++) {
            var colon = lines[j].indexOf(':');
            if (colon > 0) {
                headers[lines[j].slice(0, colon).toLowerCase()] = lines[j].slice(colon + 1).replace(/^ /, '');
            }
        }
        return {headers: headers, body: body};
    }

    function WebSocketTransport(name, url, position) {
        this.name = name;
        this.url = url;
        this.channelIds = channelIds(url);
        // One channel: the last id seen. Several: the last id per channel, for the compound id.
        this.lastId = null;
        this.ids = {};
        var id = idOfPosition(position);
        if (this.channelIds.length === 1) {
            this.lastId = id;
        } else if (id) {
            var parts = id.split(',');
            for (var i = 0; i < parts.length && i < this.channelIds.length; i++) {
                this.ids[this.channelIds[i]] = parts[i].replace(/^\[|\]$/g, '');
            }
        }
        this.socket = null;
        this.timer = null;
        this.everOpened = false;
        this.failures = 0;   // connections in a row that failed or dropped
        this.refusals = 0;   // refusals (close codes 4xxx, 1013) since the last frame
        this.running = false;
    }

    WebSocketTransport.available = function () {
        return typeof window.WebSocket === 'function' || typeof window.WebSocket === 'object';
    };

    WebSocketTransport.prototype.start = function () {
        if (!this.running) {
            this.running = true;
            this.connect();
        }
    };

    WebSocketTransport.prototype.stop = function () {
        this.running = false;
        if (this.timer !== null) {
            window.clearTimeout(this.timer);
            this.timer = null;
        }
        if (this.socket) {
            var socket = this.socket;
            this.socket = null;
            socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
            socket.close(1000);
        }
    };

    WebSocketTransport.prototype.resumeId = function () {
        if (this.channelIds.length === 1) {
            return this.lastId;
        }
        var parts = [];
        var any = false;
        for (var i = 0; i < this.channelIds.length; i++) {
            var id = this.ids[this.channelIds[i]];
            any = any || !!id;
            parts.push(id || '0:-1'); // "nothing yet" on that channel
        }
        return any ? parts.join(',') : null;
    };

    WebSocketTransport.prototype.position = function () {
        return positionOfId(this.url, this.resumeId());
    };

    WebSocketTransport.prototype.connect = function () {
        var self = this;
        var id = self.resumeId();
        var url = absoluteUrl(id ? withParameter(self.url, 'last_event_id', id) : self.url).replace(/^http/i, 'ws');
        var socket;
        try {
            socket = new window.WebSocket(url, ['pushserver.v1']); // header lines, control frames
        } catch (error) { // a URL WebSocket cannot use
            fallBack(self, 'WebSocket refused the URL: ' + error);
            return;
        }
        self.socket = socket;
        socket.binaryType = 'arraybuffer';
        var opened = false;
        var framed = false;

        socket.onopen = function () {
            opened = self.everOpened = true;
            self.failures = 0;
        };
        socket.onmessage = function (event) {
            framed = true;
            self.refusals = 0;
            self.frame(event.data);
        };
        socket.onclose = function (event) {
            if (socket !== self.socket) {
                return;
            }
            self.socket = null;
            self.closed(event.code, event.reason, opened, framed);
        };
    };

    WebSocketTransport.prototype.frame = function (data) {
        if (typeof data === 'string' && data.charAt(0) === '{') {
            // Notices; ping needs no answer (it only keeps proxies from closing idle connections).
            reportNotice(this.name, parseJSONObject(data) || {});
            return;
        }
        var frame = parseFrame(data);
        if (!frame || !frame.headers.id) {
            report(this.name, 'format', 'a frame that is not a message was skipped');
            return;
        }
        if (this.channelIds.length === 1) {
            this.lastId = frame.headers.id;
        } else {
            this.ids[frame.headers.channel] = frame.headers.id;
        }
        if (frame.body === null) {
            report(this.name, 'parse', 'a binary message that is not UTF-8 was skipped');
        } else {
            deliver(this.name, frame.body);
        }
    };

    WebSocketTransport.prototype.closed = function (code, reason, opened, framed) {
        var self = this;
        var why = 'WebSocket closed with ' + code + (reason ? ' (' + reason + ')' : '');
        var delay;
        if (code === CLOSE_DELETED) {
            ended(self); // each deleted channel was reported by its notice
            return;
        }
        if (code === CLOSE_NOT_ALLOWED && !framed) {
            fallBack(self, why);
            return;
        }
        if (code === CLOSE_GOING_AWAY || code === CLOSE_TOO_SLOW) {
            // The server restarts, or dropped us as too slow: come back soon, spread out so
            // that its other clients do not all arrive in the same instant.
            delay = Math.round(options.retryDelay * Math.random());
        } else if (code >= 4000 || code === 1013) {
            // Refused (no such channel yet, store unavailable...): back off until it is not.
            self.refusals += 1;
            if (self.refusals === 1) {
                report(self.name, 'request', why + ', retrying');
            }
            delay = backoff(self.refusals);
        } else {
            // The connection failed or dropped (1006): the server is down or unreachable.
            self.failures += 1;
            if (!self.everOpened && self.failures >= options.websocketAttempts) {
                fallBack(self, 'WebSocket never opened in ' + self.failures + ' attempts');
                return;
            }
            if (self.failures === 1) {
                report(self.name, 'request', why + (opened ? '' : ' before opening') + ', retrying');
            }
            delay = backoff(self.failures);
        }
        self.timer = window.setTimeout(function () {
            self.timer = null;
            if (self.running) {
                self.connect();
            }
        }, delay);
    };

    transports.websocket = WebSocketTransport;

    // The transport asked for by the page: $.updates.transport, set from the
    // data-pushserver-transport attribute of the script tag when present.
    var requestedTransport = $('script[data-pushserver-transport]').last().attr('data-pushserver-transport');
    var warnedTransport = null;

    function transportFor(name) {
        var wanted = $.updates.transport || 'longpoll';
        var Transport = hasOwn.call(transports, wanted) ? transports[wanted] : null;
        if (Transport && (!Transport.available || Transport.available())) {
            return Transport;
        }
        if (warnedTransport !== wanted) {
            warnedTransport = wanted;
            report(name, 'transport', '"' + wanted + '" is not available here, using long polling');
        }
        return transports.longpoll;
    }

    // Abort the long polls when the page goes away (and resume them if it comes back from
    // the back-forward cache); other requests only when options.abortOnUnload is set.
    var pageRequests = [];
    var suspended = false;

    listen(document, 'ajaxSend', function (event, xhr) {
        if (options.abortOnUnload) {
            pageRequests.push(xhr);
        }
    });
    listen(document, 'ajaxComplete', function (event, xhr) {
        for (var i = pageRequests.length - 1; i >= 0; i--) {
            if (pageRequests[i] === xhr) {
                pageRequests.splice(i, 1);
            }
        }
    });

    function abortPageRequests() {
        if (options.abortOnUnload) {
            var requests = pageRequests;
            pageRequests = [];
            $.each(requests, function (i, xhr) { xhr.abort(); });
        }
    }

    var hideEvent = 'onpagehide' in window ? 'pagehide' : 'unload';
    listen(window, 'beforeunload', abortPageRequests);
    listen(window, hideEvent, function () {
        suspended = true;
        $.each(channels, function (name, channel) { channel.stop(); });
        abortPageRequests();
    });
    listen(window, 'pageshow', function () {
        if (suspended) {
            suspended = false;
            $.each(channels, function (name, channel) { channel.start(); });
        }
    });

    $.updates = {
        version: '2.0',
        options: options,
        transports: transports,
        transport: requestedTransport || 'longpoll',

        // channels: {name: url}. A name already subscribed, or with no url, is skipped.
        // A name subscribed again after unsubscribe() resumes where it stopped (same url).
        subscribe: function (channelUrls) {
            $.each(channelUrls, function (name, url) {
                if (!url || hasOwn.call(channels, name)) {
                    return;
                }
                var position = hasOwn.call(positions, name) && positions[name].url === url ? positions[name] : null;
                delete positions[name];
                var Transport = transportFor(name);
                var channel = channels[name] = new Transport(name, url, position);
                if (!suspended) {
                    channel.start();
                }
            });
        },

        // Stop receiving on a channel; its processors stay registered. Returns whether it was subscribed.
        unsubscribe: function (name) {
            if (!hasOwn.call(channels, name)) {
                return false;
            }
            var channel = channels[name];
            delete channels[name];
            channel.stop();
            positions[name] = channel.position();
            return true;
        },

        isSubscribed: function (name) {
            return hasOwn.call(channels, name);
        },

        // processor(data) is called for each message of that channel whose data.type === type.
        registerProcessor: function (name, type, processor) {
            var byType = hasOwn.call(processors, name) ? processors[name] : (processors[name] = {});
            (hasOwn.call(byType, type) ? byType[type] : (byType[type] = [])).push(processor);
        }
    };
}(jQuery, window));
