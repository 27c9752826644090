// Types for roomcast.js, the browser client for roomcast (see README.md and docs/protocol.md).
// Kept by hand beside the module, which has no build step: change both together.

/** The server's error codes, and the client's own (`timeout` … `unsupported_transport`). */
export type RoomcastErrorCode =
  | "bad_request"
  | "too_large"
  | "rate_limited"
  | "forbidden"
  | "unauthorized"
  | "unavailable"
  | "internal"
  | "room_limit"
  | "timeout"
  | "closed"
  | "connect_timeout"
  | "unsupported_transport";

/** A request as sent (with its `id`), attached to the error it ended with. */
export interface RoomcastRequest {
  id: number;
  op: string;
  room?: string;
  [field: string]: unknown;
}

export class RoomcastError extends Error {
  constructor(code: RoomcastErrorCode | string, message?: string, request?: RoomcastRequest);
  readonly name: "RoomcastError";
  /** One of RoomcastErrorCode (a newer server may add codes). */
  code: RoomcastErrorCode | string;
  message: string;
  /** The request, when the error ended one. */
  request?: RoomcastRequest;
}

export interface Backoff {
  /** Delay of the first attempt, ms (default 250). */
  initialMs: number;
  /** Upper bound, ms (default 10000). */
  maxMs: number;
  /** Growth per attempt (default 2). */
  factor: number;
  /** Fraction of the delay that is random, 0..1 (default 0.5): delay in [base*(1-jitter), base]. */
  jitter: number;
}

/**
 * `min(maxMs, initialMs * factor^attempt)` scaled by a random factor in `[1 - jitter, 1]`.
 * `attempt` is 0-based. Pure: `random` defaults to Math.random.
 */
export function backoffDelay(attempt: number, backoff?: Partial<Backoff>, random?: () => number): number;

export type Transport = "websocket" | "sse";
export type ClientState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

/** What `onUnrecovered` and the `unrecovered` event get. */
export interface UnrecoveredInfo {
  room: string;
  /** The seq the join resumed from. */
  since: number;
  /** The epoch the join resumed from (null when none was known). */
  epoch: string | null;
  /** The room's seq in the join reply. */
  seq: number;
  /** The room's epoch in the join reply. */
  newEpoch: string;
}

export interface RoomcastOptions {
  /** Sent as `?token=`; a function is called on every (re)connect. */
  token?: string | (() => string | Promise<string>);
  /** Default ["websocket", "sse"]. */
  transports?: Transport[];
  /** Default true: after each connect, add the live non-draining members of `/cluster`. */
  discover?: boolean;
  backoff?: Partial<Backoff>;
  /** Default 15000. */
  requestTimeoutMs?: number;
  /** Default 20000. */
  connectTimeoutMs?: number;
  /** Default 3: retries of a request answered `unavailable`. */
  retryUnavailable?: number;
  onUnrecovered?: (info: UnrecoveredInfo) => void;
  WebSocket?: { new (url: string): WebSocket } | typeof WebSocket;
  EventSource?: { new (url: string): EventSource } | typeof EventSource;
  fetch?: typeof fetch;
}

/** A room event frame, as the server sends it. */
export interface RoomEvent<T = unknown> {
  type: "message";
  room: string;
  seq: number;
  epoch: string;
  data: T;
  /** The publisher's connection name. */
  from: string;
  /** The publisher's user (`sub` of its token); absent for anonymous publishers. */
  user?: string;
  /** Server time the message was sequenced, unix ms. */
  ts: number;
}

export interface PresenceMember {
  user: string;
  conn: string;
  info?: unknown;
}

export interface PresenceEvent extends PresenceMember {
  type: "presence";
  room: string;
  action: "join" | "leave";
}

export interface ConnectInfo {
  /** Null over SSE until a stream has opened (no rooms yet). */
  node: string | null;
  conn: string | null;
  transport: Transport;
  url: string;
}

export interface ConnectedInfo extends ConnectInfo {
  heartbeatMs: number | null;
}

export interface DisconnectedInfo {
  code: number;
  reason: string;
  willReconnect: boolean;
}

export interface ReconnectingInfo {
  /** 1 for the first attempt after a loss (the backoff's attempt + 1). */
  attempt: number;
  delayMs: number;
  url: string;
}

export interface ResumedInfo {
  room: string;
  recovered: boolean;
  seq: number;
  epoch: string;
}

export interface ReconnectHint {
  url: string | null;
  reason: string;
}

export interface ClientEvents {
  state: ClientState;
  connected: ConnectedInfo;
  disconnected: DisconnectedInfo;
  reconnecting: ReconnectingInfo;
  message: RoomEvent;
  presence: PresenceEvent;
  resumed: ResumedInfo;
  unrecovered: UnrecoveredInfo;
  reconnect_hint: ReconnectHint;
  server_disconnect: { reason: string };
  error: RoomcastError;
}

export interface SubscriptionEvents {
  message: RoomEvent;
  presence: PresenceEvent;
}

export interface JoinOptions {
  /** The last seq you already have: the server replays what follows. */
  since?: number;
  /** The epoch `since` belongs to. */
  epoch?: string;
  /** A per-room token (WebSocket only). */
  token?: string;
  /** Enter the room's presence set (WebSocket only). */
  presence?: boolean;
  /** Receive the room's presence changes (WebSocket only). */
  presenceEvents?: boolean;
}

export interface Subscription {
  readonly room: string;
  /** The room's seq in the latest join reply. */
  seq: number;
  /** The room's epoch in the latest join reply. */
  epoch: string | null;
  /** From the join reply when the join had `since`. */
  recovered?: boolean;
  /** The epoch and the last seq delivered; null once the room is left. */
  readonly position: { epoch: string; seq: number } | null;
  on<K extends keyof SubscriptionEvents>(event: K, fn: (arg: SubscriptionEvents[K]) => void): () => void;
  leave(): Promise<void>;
}

export interface PublishResult {
  room: string;
  seq: number;
  epoch: string;
}

export interface HistoryResult {
  room: string;
  messages: RoomEvent[];
  seq: number;
  epoch: string;
  recovered: boolean;
}

export class RoomcastClient {
  constructor(urls: string | string[], options?: RoomcastOptions);
  readonly state: ClientState;
  readonly node: string | null;
  readonly conn: string | null;
  readonly transport: Transport | null;
  readonly url: string | null;
  /** This instance's random id, the prefix of its generated idempotency keys. */
  readonly clientId: string;
  on<K extends keyof ClientEvents>(event: K, fn: (arg: ClientEvents[K]) => void): () => void;
  connect(): Promise<ConnectInfo>;
  join(room: string, options?: JoinOptions): Promise<Subscription>;
  leave(room: string): Promise<void>;
  publish(room: string, data: unknown, options?: { key?: string }): Promise<PublishResult>;
  history(room: string, options?: { since?: number; limit?: number }): Promise<HistoryResult>;
  presence(room: string): Promise<{ room: string; members: PresenceMember[] }>;
  ping(): Promise<{ ts: number }>;
  close(): void;
}
