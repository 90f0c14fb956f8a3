/** The source-side page server (CRIU page-server protocol, lazy sessions). */
export { startPageServer, type PageServer, type PageServerOptions } from './server.js';
export type { PageServerEvent, PageServerEventHandler, RefusalReason, SessionEndReason } from './events.js';
export { DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_PEER } from './limits.js';
export type { TlsFiles } from '../native/index.js';
