import { DefaultFailureConverter } from '@temporalio/common';

/** Loaded by path by workers with payload keys (workers/codec.ts), also inside the workflow bundle. */
export const failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
