/*
 * Ferry's test guest: a multiboot (v1) kernel of a few hundred bytes that
 * QEMU boots with -kernel, so a real VM has memory whose content after a
 * migration can be checked without an operating system.
 *
 * 1. It fills [pattern_addr, +pattern_len) with a xorshift32 stream from
 *    seed (x ^= x<<13; x ^= x>>17; x ^= x<<5; each new x is the next
 *    32-bit word), then sets status to 1. Words at or past the address
 *    text_at are written as text instead: (x & 0x07070707) + 0x61616161,
 *    four letters a–h, three bits of entropy a byte, so the pattern is a
 *    stretch of random data then one of text, and compresses as a real
 *    guest's memory does (text_at past the pattern: none). The stream
 *    itself is the same. The host recomputes it and compares it
 *    with guest memory read with pmemsave.
 * 2. It then zeroes the first word of every page of [dirty_addr,
 *    +dirty_len) and dirties that region for ever, one page at a
 *    time: it increments the page's first word and the pages counter,
 *    and after the last page the generation counter. So page i's first
 *    word is the number of passes that wrote it: pages / npages + 1 for
 *    i < pages % npages, pages / npages for the rest — also checkable.
 *    It writes pages_per_tick pages (16.16 fixed point) on each tick
 *    of a 1 kHz timer (the PIT, a device clock that stops while the VM
 *    is paused) and halts in between, so a paced guest leaves the host
 *    CPU alone, as a real mostly idle guest does; 0 dirties as fast as
 *    the CPU goes.
 *
 * The host patches the parameters into its copy of the image; the
 * counters are read back from guest memory at the same addresses
 * (image offset + 0x100000).
 *
 * Build (the committed guest.bin; `make guest` redoes it):
 *   as --32 -o guest.o guest.S
 *   ld -m elf_i386 -Ttext=0x100000 --oformat=binary -o guest.bin guest.o
 */
	.code32
	.text
	.globl _start
_start:
header:					/* offset 0: multiboot header */
	.long 0x1BADB002		/* magic */
	.long 0x00010000		/* flags: the address fields below are valid */
	.long -(0x1BADB002 + 0x00010000)
	.long header			/* header_addr */
	.long _start			/* load_addr */
	.long end			/* load_end_addr */
	.long 0				/* bss_end_addr: none */
	.long entry			/* entry_addr */

params:					/* offset 32: set by the host */
pattern_addr:	.long 0x00200000
pattern_len:	.long 0
seed:		.long 0x9E3779B9
dirty_addr:	.long 0
dirty_len:	.long 0
pages_per_tick:	.long 0		/* 16.16 fixed point, 1 kHz ticks; 0: flat out */
text_at:	.long 0xFFFFFFFF	/* the address where the pattern turns to text */
counters:				/* offset 60: written by the guest */
status:		.long 0
generation:	.long 0
pages:		.long 0

entry:
	cli
	lgdt	gdt_desc		/* our own flat segments: interrupts need a GDT we own */
	ljmp	$0x08, $1f
1:	movw	$0x10, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	movl	$0x9F000, %esp

	/* 1. the pattern */
	movl	pattern_addr, %edi
	movl	pattern_len, %ecx
	shrl	$2, %ecx
	movl	seed, %eax
	testl	%ecx, %ecx
	jz	2f
1:	movl	%eax, %edx
	shll	$13, %edx
	xorl	%edx, %eax
	movl	%eax, %edx
	shrl	$17, %edx
	xorl	%edx, %eax
	movl	%eax, %edx
	shll	$5, %edx
	xorl	%edx, %eax
	cmpl	text_at, %edi
	jb	5f
	movl	%eax, %edx		/* text: eax stays the stream's state */
	andl	$0x07070707, %edx
	addl	$0x61616161, %edx	/* no carries: each byte 0–7 */
	movl	%edx, (%edi)
	addl	$4, %edi
	jmp	6f
5:	stosl
6:	decl	%ecx
	jnz	1b
2:	movl	$1, status

	/* 2. the dirtied region */
	movl	dirty_addr, %edi
	movl	%edi, %ebx
	addl	dirty_len, %ebx		/* ebx: end of the region */
	cmpl	%edi, %ebx
	je	idle
	movl	%edi, %ecx		/* memory is not zero at boot: start */
3:	movl	$0, (%ecx)		/* every page's count at 0 */
	addl	$4096, %ecx
	cmpl	%ebx, %ecx
	jb	3b
	cmpl	$0, pages_per_tick
	je	flat

	/* Paced: a 1 kHz timer interrupt (PIT channel 0 on IRQ 0, the PIC
	 * remapped to vector 0x20), idle in hlt between ticks, and each
	 * tick writes pages_per_tick (16.16 fixed point) pages. */
	movl	$tick, %eax
	movw	%ax, idt + 0x20*8
	movw	$0x08, idt + 0x20*8 + 2
	movw	$0x8E00, idt + 0x20*8 + 4	/* present, ring 0, 32-bit interrupt gate */
	shrl	$16, %eax
	movw	%ax, idt + 0x20*8 + 6
	lidt	idt_desc
	movb	$0x11, %al		/* PIC: init, ICW4 follows */
	outb	%al, $0x20
	outb	%al, $0xA0
	movb	$0x20, %al		/* master: vectors 0x20–0x27 */
	outb	%al, $0x21
	movb	$0x28, %al		/* slave: 0x28–0x2f */
	outb	%al, $0xA1
	movb	$0x04, %al
	outb	%al, $0x21
	movb	$0x02, %al
	outb	%al, $0xA1
	movb	$0x01, %al		/* 8086 mode */
	outb	%al, $0x21
	outb	%al, $0xA1
	movb	$0xFE, %al		/* only IRQ 0 */
	outb	%al, $0x21
	movb	$0xFF, %al
	outb	%al, $0xA1
	movb	$0x34, %al		/* PIT channel 0, lo/hi byte, mode 2 */
	outb	%al, $0x43
	movb	$(1193 & 0xFF), %al	/* 1193182 Hz / 1193: 1 kHz */
	outb	%al, $0x40
	movb	$(1193 >> 8), %al
	outb	%al, $0x40
	xorl	%esi, %esi		/* esi: pages owed, 16.16 */
	sti
paced:
	hlt				/* until the next tick */
	addl	pages_per_tick, %esi
4:	cmpl	$0x10000, %esi
	jb	paced
	subl	$0x10000, %esi
	incl	(%edi)
	incl	pages
	addl	$4096, %edi
	cmpl	%ebx, %edi
	jb	4b
	movl	dirty_addr, %edi
	incl	generation
	jmp	4b

	/* Flat out: as fast as the CPU goes. */
flat:
	incl	(%edi)
	incl	pages
	addl	$4096, %edi
	cmpl	%ebx, %edi
	jb	flat
	movl	dirty_addr, %edi
	incl	generation
	jmp	flat

tick:
	pushl	%eax
	movb	$0x20, %al		/* end of interrupt */
	outb	%al, $0x20
	popl	%eax
	iret

idle:
	hlt
	jmp	idle

	.balign 8
gdt:
	.quad	0
	.quad	0x00CF9A000000FFFF	/* 0x08: code, base 0, 4 GiB, 32-bit */
	.quad	0x00CF92000000FFFF	/* 0x10: data, base 0, 4 GiB */
gdt_desc:
	.word	3*8 - 1
	.long	gdt
	.balign 8
idt:
	.fill	0x30, 8, 0		/* only vector 0x20 is set, at run time */
idt_desc:
	.word	0x30*8 - 1
	.long	idt
end:
