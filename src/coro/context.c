/*
 * Machine context switching for coroutines: a hand-written switch on
 * x86-64 and aarch64, ucontext elsewhere (see context.h).
 */
#include "context.h"

#include <stdint.h>
#include <stdlib.h>

#if defined(CORO_CTX_UCONTEXT)

/* makecontext passes int arguments only, so the pointers travel in halves. */
static void ctx_trampoline(unsigned fn_hi, unsigned fn_lo, unsigned arg_hi, unsigned arg_lo)
{
    uintptr_t fn = ((uintptr_t)fn_hi << 16 << 16) | fn_lo;
    uintptr_t arg = ((uintptr_t)arg_hi << 16 << 16) | arg_lo;
    /* makecontext passes only ints: the pointers arrive in halves */
    ((coro_ctx_entry *)fn)((void *)arg); // NOLINT(performance-no-int-to-ptr)
    abort(); /* an entry function must switch away for good, never return */
}

void coro_ctx_make(struct coro_ctx *ctx, void *lo, size_t size, coro_ctx_entry *fn, void *arg)
{
    getcontext(&ctx->uc);
    ctx->uc.uc_stack.ss_sp = lo;
    ctx->uc.uc_stack.ss_size = size;
    ctx->uc.uc_link = NULL;
    uintptr_t f = (uintptr_t)fn, a = (uintptr_t)arg;
    makecontext(&ctx->uc, (void (*)(void))ctx_trampoline, 4, (unsigned)(f >> 16 >> 16),
                (unsigned)(f & 0xffffffffu), (unsigned)(a >> 16 >> 16),
                (unsigned)(a & 0xffffffffu));
}

void coro_ctx_switch(struct coro_ctx *from, struct coro_ctx *to)
{
    if (swapcontext(&from->uc, &to->uc) != 0)
        abort();
}

const char *coro_ctx_kind(void)
{
    return "ucontext";
}

#elif defined(__x86_64__)

/*
 * System V x86-64: rbx, rbp, r12-r15 are callee-saved, as are the x87
 * control word and the MXCSR control bits. A switch pushes them, stores rsp
 * in *from, loads rsp from *to and pops the other context's values. A new
 * context "returns" into coro_ctx_boot with fn in r13 and arg in r12.
 */
__attribute__((visibility("hidden"))) void coro_ctx_boot(void);

__asm__(".pushsection .text\n"
        ".globl coro_ctx_switch\n"
        ".hidden coro_ctx_switch\n"
        ".type coro_ctx_switch,@function\n"
        "coro_ctx_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    subq $8, %rsp\n"
        "    stmxcsr (%rsp)\n"
        "    fnstcw 4(%rsp)\n"
        "    movq %rsp, (%rdi)\n"
        "    movq (%rsi), %rsp\n"
        "    ldmxcsr (%rsp)\n"
        "    fldcw 4(%rsp)\n"
        "    addq $8, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size coro_ctx_switch, .-coro_ctx_switch\n"
        ".globl coro_ctx_boot\n"
        ".hidden coro_ctx_boot\n"
        ".type coro_ctx_boot,@function\n"
        "coro_ctx_boot:\n"
        "    movq %r12, %rdi\n"
        "    callq *%r13\n"
        "    ud2\n"
        ".size coro_ctx_boot, .-coro_ctx_boot\n"
        ".popsection\n");

void coro_ctx_make(struct coro_ctx *ctx, void *lo, size_t size, coro_ctx_entry *fn, void *arg)
{
    uintptr_t top = ((uintptr_t)lo + size) & ~(uintptr_t)15;
    /* 8 saved words; after they are popped and `ret` consumed the last one,
     * rsp must be 16-byte aligned so that the call in coro_ctx_boot enters
     * fn with the alignment the ABI promises. The 16 bytes left at the top
     * stay zero: a null return address ends backtraces cleanly. */
    uint64_t *sp = (uint64_t *)(top - 16 - 8 * 8); // NOLINT(performance-no-int-to-ptr): a stack top
    sp[0] = 0x037full << 32 | 0x1f80;              /* default MXCSR, x87 control word */
    sp[1] = 0;                                     /* r15 */
    sp[2] = 0;                                     /* r14 */
    sp[3] = (uintptr_t)fn;                         /* r13 */
    sp[4] = (uintptr_t)arg;                        /* r12 */
    sp[5] = 0;                                     /* rbx */
    sp[6] = 0;                                     /* rbp */
    sp[7] = (uintptr_t)coro_ctx_boot;              /* return address */
    sp[8] = 0;
    sp[9] = 0;
    ctx->sp = sp;
}

const char *coro_ctx_kind(void)
{
    return "x86-64 assembly";
}

#elif defined(__aarch64__)

/*
 * AAPCS64: x19-x28, the frame pointer x29, the link register x30 and the
 * low halves of v8-v15 (d8-d15) are callee-saved. A switch stores them in a
 * 176-byte frame (a multiple of 16, as sp must stay aligned), swaps sp and
 * returns through the other context's x30. A new context returns into
 * coro_ctx_boot with arg in x19 and fn in x20.
 */
__attribute__((visibility("hidden"))) void coro_ctx_boot(void);

__asm__(".pushsection .text\n"
        ".globl coro_ctx_switch\n"
        ".hidden coro_ctx_switch\n"
        ".type coro_ctx_switch,%function\n"
        "coro_ctx_switch:\n"
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
        "    mov x9, sp\n"
        "    str x9, [x0]\n"
        "    ldr x9, [x1]\n"
        "    mov sp, x9\n"
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
        ".size coro_ctx_switch, .-coro_ctx_switch\n"
        ".globl coro_ctx_boot\n"
        ".hidden coro_ctx_boot\n"
        ".type coro_ctx_boot,%function\n"
        "coro_ctx_boot:\n"
        "    mov x0, x19\n"
        "    blr x20\n"
        "    brk #0\n"
        ".size coro_ctx_boot, .-coro_ctx_boot\n"
        ".popsection\n");

void coro_ctx_make(struct coro_ctx *ctx, void *lo, size_t size, coro_ctx_entry *fn, void *arg)
{
    uintptr_t top = ((uintptr_t)lo + size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 176);
    for (int i = 0; i < 22; i++)
        sp[i] = 0;
    sp[0] = (uintptr_t)arg;            /* x19 */
    sp[1] = (uintptr_t)fn;             /* x20 */
    sp[11] = (uintptr_t)coro_ctx_boot; /* x30 */
    ctx->sp = sp;
}

const char *coro_ctx_kind(void)
{
    return "aarch64 assembly";
}

#endif
