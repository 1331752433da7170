/*
 * Progress display: one line on a terminal, redrawn in place, saying which
 * mailbox is being worked on and how much was copied, in it and overall,
 * and how fast. It exists only when standard output is a terminal and -q
 * is not given (main() decides); everything else (logs, scripts, pipes)
 * never sees it.
 *
 * The line is drawn at most every PROGRESS_INTERVAL_MS while messages
 * flow, and at once when a new mailbox starts. It is kept narrower than
 * the terminal, so that redrawing it (carriage return, erase line) never
 * leaves a wrapped remainder behind. When log lines go to the same
 * terminal, the logger calls progress_hide() before writing and
 * progress_show() after (see logger_set_tty_guard), so the two never mix.
 *
 * A struct progress is owned by main() and lent to the logger and the
 * engine. Every function accepts NULL and then does nothing. Nothing
 * here yields.
 */
#ifndef INTERIMAP_PROGRESS_H
#define INTERIMAP_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROGRESS_INTERVAL_MS 100

struct progress;

/* A display on fd (a terminal). NULL when out of memory. */
struct progress *progress_new(int fd);
void progress_free(struct progress **p);

/* Mailbox `index` (from 1) of `count` starts: drawn at once. */
void progress_mailbox(struct progress *p, const char *mailbox, size_t index, size_t count);
/* One message of `bytes` bytes was copied. */
void progress_copied(struct progress *p, uint64_t bytes);
/* The round is over: the line is erased (the totals stay for the next
 * round's rate). */
void progress_end(struct progress *p);

/* Erase the line / draw it again (for the logger). */
void progress_hide(struct progress *p);
void progress_show(struct progress *p);

/* Formats the line for a terminal `width` columns wide (exposed for
 * tests). Returns its length. */
size_t progress_format(const struct progress *p, uint64_t now_ns, char *buf, size_t len,
                       size_t width);

#endif
