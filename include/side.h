/*
 * The two servers a run synchronizes. Every per-side array of the engine
 * and the database is indexed by this enum.
 */
#ifndef INTERIMAP_SIDE_H
#define INTERIMAP_SIDE_H

/* Stored as 0/1 in the journal tables of the database: keep the values. */
enum side { SIDE_LOCAL = 0, SIDE_REMOTE = 1 };

#endif
