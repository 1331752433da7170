/*
 * The bare context switch, without scheduler or libuv. Every check compares
 * exact values that a clobbered register or stack slot would change, on
 * both sides of the switch:
 *  - registers: on x86-64 and aarch64 an assembly helper loads every
 *    callee-saved register with a value of its own just before a switch and
 *    reads them back just after it is resumed; the values differ per side
 *    and per round, so a register restored from the other side, from an
 *    earlier round or not at all shows;
 *  - live locals: 12 integers and 4 doubles carried across every switch by
 *    a recurrence that never forgets (each step is a bijection of the old
 *    value, the doubles hold exact integer sums), compared at the end with
 *    the same recurrence run without switching;
 *  - a new context starts on a 16-byte aligned stack inside its own stack;
 *  - on x86-64 the SSE and x87 control words (the rounding mode) belong to
 *    each context.
 * Built over the native switch and over the ucontext fallback. Also built
 * for other CPUs by hand (see doc/internals/coro.md).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "context.h"

enum { ROUNDS = 20000 };

struct shared {
    struct coro_ctx main, co;
    uintptr_t probe_addr;        /* an aligned local of the new context */
    long reg_rounds, reg_faults; /* marked-register rounds seen by the coroutine */
    uint64_t co_locals[16];      /* the coroutine's locals after its last switch */
    long ctl_faults;             /* control-word mismatches seen by the coroutine */
    bool finished;
};

/* splitmix64: distinct, well-spread values from a counter. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

/* ---- callee-saved registers, each with a value of its own ---- */

#if defined(__x86_64__) && !defined(__ILP32__)
#define MARKED_REGS 6
static const char *const marked_names[MARKED_REGS] = {"rbx", "rbp", "r12", "r13", "r14", "r15"};
#elif defined(__aarch64__) && !defined(__ILP32__)
#define MARKED_REGS 19
static const char *const marked_names[MARKED_REGS] = {
    "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27", "x28",
    "x29", "d8",  "d9",  "d10", "d11", "d12", "d13", "d14", "d15"};
#endif

#ifdef MARKED_REGS
/*
 * Loads the callee-saved registers from in[], calls coro_ctx_switch(from,
 * to) and, once resumed, stores the same registers into out[]. The caller's
 * own values of those registers are saved before and restored after, as the
 * calling convention requires of any function.
 */
void test_marked_switch(struct coro_ctx *from, struct coro_ctx *to, const uint64_t *in,
                        uint64_t *out);

#if defined(__x86_64__)
/* rdi = from, rsi = to (passed on untouched), rdx = in, rcx = out. Seven
 * pushes after the return address leave rsp 16-byte aligned for the call. */
__asm__(".pushsection .text\n"
        ".globl test_marked_switch\n"
        ".hidden test_marked_switch\n"
        ".type test_marked_switch,@function\n"
        "test_marked_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    pushq %rcx\n"
        "    movq 0(%rdx), %rbx\n"
        "    movq 8(%rdx), %rbp\n"
        "    movq 16(%rdx), %r12\n"
        "    movq 24(%rdx), %r13\n"
        "    movq 32(%rdx), %r14\n"
        "    movq 40(%rdx), %r15\n"
        "    call coro_ctx_switch@PLT\n"
        "    popq %rcx\n"
        "    movq %rbx, 0(%rcx)\n"
        "    movq %rbp, 8(%rcx)\n"
        "    movq %r12, 16(%rcx)\n"
        "    movq %r13, 24(%rcx)\n"
        "    movq %r14, 32(%rcx)\n"
        "    movq %r15, 40(%rcx)\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size test_marked_switch, .-test_marked_switch\n"
        ".popsection\n");
#else
/* x0 = from, x1 = to (passed on untouched), x2 = in, x3 = out. The frame
 * holds the caller's x19-x30 and d8-d15, then out. */
__asm__(".pushsection .text\n"
        ".globl test_marked_switch\n"
        ".hidden test_marked_switch\n"
        ".type test_marked_switch,%function\n"
        "test_marked_switch:\n"
        "    sub sp, sp, #176\n"
        "    stp x19, x20, [sp, #0]\n"
        "    stp x21, x22, [sp, #16]\n"
        "    stp x23, x24, [sp, #32]\n"
        "    stp x25, x26, [sp, #48]\n"
        "    stp x27, x28, [sp, #64]\n"
        "    stp x29, x30, [sp, #80]\n"
        "    stp d8, d9, [sp, #96]\n"
        "    stp d10, d11, [sp, #112]\n"
        "    stp d12, d13, [sp, #128]\n"
        "    stp d14, d15, [sp, #144]\n"
        "    str x3, [sp, #160]\n"
        "    ldp x19, x20, [x2, #0]\n"
        "    ldp x21, x22, [x2, #16]\n"
        "    ldp x23, x24, [x2, #32]\n"
        "    ldp x25, x26, [x2, #48]\n"
        "    ldp x27, x28, [x2, #64]\n"
        "    ldr x29, [x2, #80]\n"
        "    ldp d8, d9, [x2, #88]\n"
        "    ldp d10, d11, [x2, #104]\n"
        "    ldp d12, d13, [x2, #120]\n"
        "    ldp d14, d15, [x2, #136]\n"
        "    bl coro_ctx_switch\n"
        "    ldr x3, [sp, #160]\n"
        "    stp x19, x20, [x3, #0]\n"
        "    stp x21, x22, [x3, #16]\n"
        "    stp x23, x24, [x3, #32]\n"
        "    stp x25, x26, [x3, #48]\n"
        "    stp x27, x28, [x3, #64]\n"
        "    str x29, [x3, #80]\n"
        "    stp d8, d9, [x3, #88]\n"
        "    stp d10, d11, [x3, #104]\n"
        "    stp d12, d13, [x3, #120]\n"
        "    stp d14, d15, [x3, #136]\n"
        "    ldp x19, x20, [sp, #0]\n"
        "    ldp x21, x22, [sp, #16]\n"
        "    ldp x23, x24, [sp, #32]\n"
        "    ldp x25, x26, [sp, #48]\n"
        "    ldp x27, x28, [sp, #64]\n"
        "    ldp x29, x30, [sp, #80]\n"
        "    ldp d8, d9, [sp, #96]\n"
        "    ldp d10, d11, [sp, #112]\n"
        "    ldp d12, d13, [sp, #128]\n"
        "    ldp d14, d15, [sp, #144]\n"
        "    add sp, sp, #176\n"
        "    ret\n"
        ".size test_marked_switch, .-test_marked_switch\n"
        ".popsection\n");
#endif

/* One switch with marked registers; returns whether every register came
 * back with the value this side put there. side 0 is main, 1 the coroutine. */
static bool marked_round(struct coro_ctx *from, struct coro_ctx *to, long round, int side)
{
    uint64_t in[MARKED_REGS], out[MARKED_REGS];
    for (int k = 0; k < MARKED_REGS; k++) {
        in[k] = mix((uint64_t)round << 8 | (uint64_t)side << 7 | (uint64_t)k);
        out[k] = ~in[k];
    }
    test_marked_switch(from, to, in, out);
    bool same = true;
    for (int k = 0; k < MARKED_REGS; k++) {
        if (out[k] != in[k]) {
            fprintf(stderr, "%s, round %ld: %s is %#llx, was %#llx\n", side ? "coroutine" : "main",
                    round, marked_names[k], (unsigned long long)out[k], (unsigned long long)in[k]);
            same = false;
        }
    }
    return same;
}
#endif

/* ---- many live locals ---- */

/*
 * Runs a recurrence over 12 integers and 4 doubles kept in locals, switching
 * from -> to after every round when from is not NULL, and stores the final
 * values in out[16]. Each step changes a value by a bijection of its old
 * value and the doubles only ever add small integers (exact below 2^53), so
 * a value disturbed at any round changes the result.
 */
static void carry_locals(struct coro_ctx *from, struct coro_ctx *to, uint64_t seed, uint64_t *out)
{
    uint64_t a0 = mix(seed), a1 = mix(seed + 1), a2 = mix(seed + 2), a3 = mix(seed + 3);
    uint64_t a4 = mix(seed + 4), a5 = mix(seed + 5), a6 = mix(seed + 6), a7 = mix(seed + 7);
    uint64_t a8 = mix(seed + 8), a9 = mix(seed + 9), a10 = mix(seed + 10), a11 = mix(seed + 11);
    double f0 = (double)(a0 >> 44), f1 = -(double)(a1 >> 44), f2 = 0.5, f3 = -0.25;

    for (uint64_t i = 0; i < ROUNDS; i++) {
        a0 += a11 ^ i;
        a1 ^= a0 * 3;
        a2 += (a1 >> 7) | 1;
        a3 = a3 * 0x5851f42d4c957f2du + a2;
        a4 ^= a3 >> 11;
        a5 += a4 ^ a0;
        a6 = (a6 << 13 | a6 >> 51) ^ a5;
        a7 += a6 * 5;
        a8 ^= a7 + i;
        a9 = a9 * 0x2545f4914f6cdd1du + a8;
        a10 += a9 >> 3;
        a11 ^= a10 * 7;
        f0 += (double)(a0 & 0xff);
        f1 -= (double)(a5 & 0xff);
        f2 += f0;
        f3 += f1 + (double)(a11 & 0xf);
        if (from != NULL)
            coro_ctx_switch(from, to);
    }
    const uint64_t ints[12] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11};
    const double reals[4] = {f0, f1, f2, f3};
    memcpy(out, ints, sizeof ints);
    memcpy(out + 12, reals, sizeof reals);
}

static const uint64_t seed_main = 1000, seed_co = 2000;

/* ---- SSE and x87 control words ---- */

#if defined(__x86_64__)
#define CONTROL_WORDS 1
/* The control bits of MXCSR (the status flags, bits 0-5, left out) and the
 * x87 control word. */
static uint32_t mxcsr_get(void)
{
    uint32_t v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v & ~0x3fu;
}

static void mxcsr_set(uint32_t v)
{
    __asm__ volatile("ldmxcsr %0" : : "m"(v));
}

static uint16_t x87cw_get(void)
{
    uint16_t v;
    __asm__ volatile("fnstcw %0" : "=m"(v));
    return v;
}

static void x87cw_set(uint16_t v)
{
    __asm__ volatile("fldcw %0" : : "m"(v));
}

/* Rounding control: MXCSR bits 13-14, x87 control word bits 10-11. */
#define MXCSR_ROUND_ZERO 0x6000u
#define MXCSR_ROUND_DOWN 0x2000u
#define X87_ROUND_ZERO   0x0c00u
#define X87_ROUND_DOWN   0x0400u
#endif

/* ---- the coroutine ---- */

static void co_entry(void *arg)
{
    struct shared *p = arg;
    /* a 16-byte aligned object on the new stack proves the alignment the
     * ABI promised at entry (vector spills would fault otherwise) */
    _Alignas(16) volatile char probe[16];
    probe[0] = 1;
    p->probe_addr = (uintptr_t)probe;
#ifdef CONTROL_WORDS
    /* a new context starts with the default control state */
    uint32_t mx = mxcsr_get();
    uint16_t cw = x87cw_get();
    if (mx != 0x1f80u || cw != 0x037fu) {
        fprintf(stderr, "coroutine starts with MXCSR %#x, x87 control %#x\n", mx, cw);
        p->ctl_faults++;
    }
#endif

#ifdef MARKED_REGS
    for (long r = 0; r < ROUNDS; r++) {
        if (!marked_round(&p->co, &p->main, r, 1))
            p->reg_faults++;
        p->reg_rounds++;
    }
#endif

    carry_locals(&p->co, &p->main, seed_co, p->co_locals);

#ifdef CONTROL_WORDS
    mxcsr_set(mx | MXCSR_ROUND_ZERO);
    x87cw_set((uint16_t)(cw | X87_ROUND_ZERO));
    coro_ctx_switch(&p->co, &p->main); /* main changes its own meanwhile */
    if (mxcsr_get() != (mx | MXCSR_ROUND_ZERO) || x87cw_get() != (cw | X87_ROUND_ZERO)) {
        fprintf(stderr, "coroutine's rounding mode changed: MXCSR %#x, x87 %#x\n", mxcsr_get(),
                x87cw_get());
        p->ctl_faults++;
    }
    mxcsr_set(mx);
    x87cw_set(cw);
#endif

    p->finished = true;
    coro_ctx_switch(&p->co, &p->main);
    abort(); /* never resumed */
}

int main(void)
{
    fprintf(stderr, "context switch: %s\n", coro_ctx_kind());
    size_t size = (size_t)64 * 1024;
    char *stack = malloc(size);
    if (stack == NULL) {
        CHECK_FAIL("no memory for the stack");
        return check_finish();
    }
    struct shared p = {0};
#ifdef CONTROL_WORDS
    uint32_t mx = mxcsr_get();
    uint16_t cw = x87cw_get();
#endif
    coro_ctx_make(&p.co, stack, size, co_entry, &p);
    coro_ctx_switch(&p.main, &p.co); /* starts it */

    CHECK_UINT(p.probe_addr % 16, 0);
    CHECK(p.probe_addr > (uintptr_t)stack && p.probe_addr < (uintptr_t)stack + size);

#ifdef MARKED_REGS
    long faults = 0;
    for (long r = 0; r < ROUNDS; r++)
        if (!marked_round(&p.main, &p.co, r, 0))
            faults++;
    CHECK_INT(faults, 0);
    CHECK_INT(p.reg_rounds, ROUNDS);
    CHECK_INT(p.reg_faults, 0);
#else
    fprintf(stderr, "no register-level check on this CPU\n");
#endif

    uint64_t got[16], want[16];
    carry_locals(&p.main, &p.co, seed_main, got);
    carry_locals(NULL, NULL, seed_main, want);
    for (int k = 0; k < 16; k++)
        if (!CHECK_UINT(got[k], want[k]))
            fprintf(stderr, "  main's local %d\n", k);
    carry_locals(NULL, NULL, seed_co, want);
    for (int k = 0; k < 16; k++)
        if (!CHECK_UINT(p.co_locals[k], want[k]))
            fprintf(stderr, "  coroutine's local %d\n", k);
    /* the two sides' values are not the same sequence: each compared with
     * its own */
    CHECK(memcmp(got, p.co_locals, sizeof got) != 0);

#ifdef CONTROL_WORDS
    /* the coroutine set round-to-zero and switched here */
    CHECK_UINT(mxcsr_get(), mx);
    CHECK_UINT(x87cw_get(), cw);
    mxcsr_set(mx | MXCSR_ROUND_DOWN);
    x87cw_set((uint16_t)(cw | X87_ROUND_DOWN));
    coro_ctx_switch(&p.main, &p.co);
    CHECK_UINT(mxcsr_get(), mx | MXCSR_ROUND_DOWN);
    CHECK_UINT(x87cw_get(), cw | X87_ROUND_DOWN);
    mxcsr_set(mx);
    x87cw_set(cw);
    CHECK_INT(p.ctl_faults, 0);
#endif
    /* the coroutine's last switch was its final one */
    CHECK(p.finished);

    free(stack); /* the context is abandoned at its last switch: nothing refers to it */
    return check_finish();
}
