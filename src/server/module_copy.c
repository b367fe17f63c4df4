/*
 * A handler module linked with the library (poolsrv::poolsrv, or
 * `pkg-config --libs poolsrv`) instead of building against its headers
 * only. The static library's objects are then copied into the module: its
 * calls of the public API still reach the program's copy (the program's
 * exported symbols come first), but what those copied objects call among
 * themselves stays inside the module, with state of its own (log level,
 * sinks, counters) beside the program's. Nothing fails at once; it is
 * refused at load instead, naming the symbol.
 *
 * The module file's dynamic symbol table says what it defines (read from
 * the file: the in-memory one cannot be walked portably without its
 * symbol count); dlsym on its handle finds what it or its own
 * dependencies define, which covers a libpoolsrv.so it links.
 */
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "module_copy.h"

#if __SIZEOF_POINTER__ == 8
#define PS__ELF_CLASS ELFCLASS64
#else
#define PS__ELF_CLASS ELFCLASS32
#endif

/* The public API's names: ps_ and a letter (cmake/poolsrv.map). */
static bool public_name(const char *name)
{
    return strncmp(name, "ps_", 3) == 0 && name[3] >= 'a' && name[3] <= 'z';
}

/* True when name, looked up in the module's scope, is not the process's. */
static bool own_copy(void *dl, const char *name, char *sym, size_t symlen)
{
    void *mine = dlsym(dl, name);
    if (mine == NULL || mine == dlsym(RTLD_DEFAULT, name))
        return false;
    snprintf(sym, symlen, "%s", name);
    return true;
}

/* The defined public symbols of the ELF image at map (size bytes), each
 * tried with own_copy. A malformed table is skipped: dlopen took the file,
 * and this check only adds a refusal. */
static bool scan_dynsym(const unsigned char *map, size_t size, void *dl, char *sym, size_t symlen)
{
    const ElfW(Ehdr) *eh = (const void *)map;
    if (size < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 ||
        eh->e_ident[EI_CLASS] != PS__ELF_CLASS || eh->e_shentsize != sizeof(ElfW(Shdr)) ||
        eh->e_shoff > size || (size - eh->e_shoff) / sizeof(ElfW(Shdr)) < eh->e_shnum)
        return false;
    const ElfW(Shdr) *sh = (const void *)(map + eh->e_shoff);
    for (size_t i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_DYNSYM || sh[i].sh_link >= eh->e_shnum ||
            sh[i].sh_offset > size || sh[i].sh_size > size - sh[i].sh_offset)
            continue;
        const ElfW(Shdr) *strs = &sh[sh[i].sh_link];
        if (strs->sh_offset > size || strs->sh_size > size - strs->sh_offset || strs->sh_size == 0)
            continue;
        const char *names = (const char *)map + strs->sh_offset;
        const ElfW(Sym) *syms = (const void *)(map + sh[i].sh_offset);
        size_t n = sh[i].sh_size / sizeof(ElfW(Sym));
        for (size_t s = 0; s < n; s++) {
            if (syms[s].st_shndx == SHN_UNDEF || syms[s].st_name >= strs->sh_size ||
                memchr(names + syms[s].st_name, '\0', strs->sh_size - syms[s].st_name) == NULL)
                continue;
            const char *name = names + syms[s].st_name;
            if (public_name(name) && own_copy(dl, name, sym, symlen))
                return true;
        }
    }
    return false;
}

int ps__module_own_copy(void *dl, const char *path, char *sym, size_t symlen)
{
    /* Every libpoolsrv has ps_version: a copy among the module's
     * dependencies shows there. */
    if (own_copy(dl, "ps_version", sym, symlen))
        return 1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct stat st;
    void *map = MAP_FAILED;
    if (fstat(fd, &st) == 0 && st.st_size > 0)
        map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return 0;
    bool found = scan_dynsym(map, (size_t)st.st_size, dl, sym, symlen);
    munmap(map, (size_t)st.st_size);
    return found ? 1 : 0;
}
