import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/** Search attributes the project registers on the server (dev server flags, or the operator API). */
export const dacpStageKey = defineSearchAttributeKey('DacpStage', SearchAttributeType.KEYWORD);
export const dacpStateKey = defineSearchAttributeKey('DacpState', SearchAttributeType.KEYWORD);

export const SEARCH_ATTRIBUTES = { DacpStage: 'Keyword', DacpState: 'Keyword' } as const;
