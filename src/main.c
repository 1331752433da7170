#include <stdio.h>
#include <string.h>

#include "interimap-version.h"

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("interimap %s\n", INTERIMAP_VERSION);
        return 0;
    }
    fprintf(stderr, "interimap: not implemented yet\n");
    return 1;
}
