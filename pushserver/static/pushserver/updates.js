/*!
 * pushserver updates.js: receive pushed JSON updates in the browser (requires jQuery >= 1.5.1).
 *
 *     $.updates.subscribe({main: '{% channel_url "some_channel_id" %}'});
 *     $.updates.registerProcessor('main', 'answer', function (data) { ... });
 *     $.updates.unsubscribe('main');
 *
 * Each message is a JSON object; its top-level "type" picks the processors that get it.
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
        // function (channelName, kind, detail): told about problems instead of the console.
        // kind is 'request', 'headers', 'empty', 'parse', 'format', 'processor' or 'transport'.
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
     * waiting as long as it takes. A new transport implements the same small interface:
     * new Transport(name, url, position); start(); stop(); position() -> {url, lastModified, etag}.
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

    // The transport asked for by the page: $.updates.transport, set from the
    // data-pushserver-transport attribute of the script tag when present.
    var requestedTransport = $('script[data-pushserver-transport]').last().attr('data-pushserver-transport');
    var warnedTransport = null;

    function transportFor(name) {
        var wanted = $.updates.transport || 'longpoll';
        if (hasOwn.call(transports, wanted)) {
            return transports[wanted];
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
