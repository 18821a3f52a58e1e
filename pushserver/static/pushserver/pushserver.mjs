/*!
 * pushserver.mjs: the ES module of pushserver's browser client.
 *
 *     import {subscribe} from '/static/pushserver/pushserver.mjs';
 *
 * The code is pushserver.js, imported here for its one effect (it defines PushServer on the
 * global object, once, whichever of the two is loaded first); this module exports that same
 * object, so a page that loads both gets one client, and there is no build step to keep two
 * copies in line. Types: pushserver.d.ts.
 */
import './pushserver.js';

const PushServer = globalThis.PushServer;

export const {subscribe, Subscription, Message, version, subprotocol, transports, defaults} = PushServer;
export default PushServer;
