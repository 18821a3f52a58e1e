// Types of pushserver's browser client: pushserver.mjs (ES module) and pushserver.js (the
// classic script, which defines the global PushServer).

export type TransportName = 'websocket' | 'eventsource' | 'longpoll';

/** One published message, as received. */
export declare class Message {
    /** The channel id it was published to. */
    readonly channel: string;
    /** Its id, "<time>:<tag>", the position a resume starts after. */
    readonly id: string;
    /** The body: a string, or an ArrayBuffer for a binary body (WebSocket, long-poll). */
    readonly data: string | ArrayBuffer;
    /** The publisher's Content-Type; null over event streams, which do not carry it. */
    readonly contentType: string | null;
    /** The event name it was published with (X-EventSource-Event), or null. */
    readonly event: string | null;
    /** The body as text (UTF-8). */
    text(): string;
    /** The body parsed as JSON; throws when it is not JSON. */
    json<T = unknown>(): T;
}

/** Messages between `after` and `next` left the server's buffer before they were read. */
export interface Gap {
    channel: string;
    after: string;
    next: string | null;
}

export type ProblemKind = 'transport' | 'request' | 'closed' | 'server';

export interface Options {
    /** The first transport to try, then the ones after it in websocket, eventsource,
     * longpoll. Default: the script tag's data-pushserver-transport
     * ({% pushserver_client %}), else 'websocket'. */
    transport?: TransportName | null;
    /** Send cookies to a push server on another origin (its location needs
     * allow_credentials and a named allow_origin). Default false. */
    withCredentials?: boolean;
    /** Event streams only: the event names to receive besides unnamed messages. */
    events?: string[];
    /** Keep positions in sessionStorage (under this key, or one made from the URL), so a
     * reloaded page resumes where it stopped. Default false. */
    resume?: boolean | string;
    /** First wait after a failure in ms (1000), doubled each time up to maxRetryDelay
     * (30000), shortened by a random fraction up to jitter (0.5). */
    retryDelay?: number;
    maxRetryDelay?: number;
    jitter?: number;
    /** Attempts in a row that never opened before falling back to the next transport (2). */
    fallbackAfter?: number;
    /** Long-poll: the least time between two polls of a channel, in ms (250). */
    minPollInterval?: number;
    onMessage?: (this: Subscription, message: Message) => void;
    onGap?: (this: Subscription, gap: Gap) => void;
    onDeleted?: (this: Subscription, channel: string) => void;
    onError?: (this: Subscription, kind: ProblemKind, detail: string) => void;
    onTransport?: (this: Subscription, transport: TransportName) => void;
}

export declare class Subscription {
    constructor(url: string, options?: Options);
    /** The channels received, in the order of the URL and then of subscribe(). */
    readonly channels: string[];
    /** The running transport, or null once every one failed. */
    readonly transport: TransportName | null;
    readonly options: Required<Options>;
    /** The last id received on `channel`, "0:-1" for none. */
    position(channel: string): string;
    /** Add a channel (on the open WebSocket, else by reconnecting); false if already there. */
    subscribe(channel: string): boolean;
    /** Stop receiving a channel; false if it was not subscribed. */
    unsubscribe(channel: string): boolean;
    /** Stop everything. */
    close(): void;
}

/** Receive the channels `url` names (a subscriber URL, several ids joined by ","). */
export declare function subscribe(url: string, options?: Options): Subscription;

export declare const version: string;
/** The WebSocket subprotocol the client asks for. */
export declare const subprotocol: string;
export declare const transports: TransportName[];
export declare const defaults: Required<Options>;

declare const client: {
    version: typeof version;
    subprotocol: typeof subprotocol;
    transports: typeof transports;
    defaults: typeof defaults;
    subscribe: typeof subscribe;
    Subscription: typeof Subscription;
    Message: typeof Message;
};
export default client;

declare global {
    /** Defined by the classic script pushserver.js (and by pushserver.mjs, which loads it). */
    var PushServer: typeof client;
}
